//! 200 transfers through IPC leave the plugin's managed state empty and the process's live
//! heap where it was after warm-up (dhat, testing mode): nothing the plugin keeps per job
//! outlives the job. The warm-up is long because a table in the runtime grows once, for
//! good, somewhere in the first hundred jobs.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use common::Harness;
use serde_json::json;
use tidegate_testkit::heap::{settle_to, settled};
use tidegate_testkit::{data, TestServer};

const WARM_UP: usize = 100;
const TRANSFERS: usize = 200;

fn one(h: &Harness, file: &std::path::Path, to: &str) {
    let (channel, events) = h.channel();
    h.invoke(
        "send",
        json!({"sources": [file], "destinations": [to],
               "options": {"streams": 1}, "onProgress": channel}),
    )
    .unwrap();
    let got = h.wait_for(events, "finished");
    assert_eq!(got.last().unwrap()["report"]["success"], true, "{got:?}");
    h.sent.lock().unwrap().remove(&events);
    h.wait_idle();
}

#[test]
fn two_hundred_transfers_leave_no_job_and_no_live_heap() {
    // The heap tests' runtime: its blocking threads live for the whole test, so that none
    // starts or retires (with its thread-local heap) in the middle of a measurement.
    let rt = tidegate_testkit::heap::runtime();
    tauri::async_runtime::set(rt.handle().clone());
    let h = Harness::new(&["tidegate:default"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    std::fs::write(&file, data(300 << 10, 1)).unwrap();
    let server = tauri::async_runtime::block_on(TestServer::start_with(anonymous));
    let to = server.addr.to_string();
    one(&h, &file, &to);
    tauri::async_runtime::block_on(server.idle());

    let profiler = dhat::Profiler::builder().testing().build();
    for _ in 0..WARM_UP {
        one(&h, &file, &to);
        tauri::async_runtime::block_on(server.idle());
    }
    let before = tauri::async_runtime::block_on(settled());
    for _ in 0..TRANSFERS {
        one(&h, &file, &to);
        tauri::async_runtime::block_on(server.idle());
    }
    assert_eq!(h.jobs(), 0, "the managed state is empty");
    let after = tauri::async_runtime::block_on(settle_to(&before));
    drop(profiler);
    eprintln!("after warm-up: {before:?}\nafter {TRANSFERS} transfers: {after:?}");
    assert_eq!(
        (after.curr_bytes, after.curr_blocks),
        (before.curr_bytes, before.curr_blocks),
        "live heap (bytes, blocks) changed over {TRANSFERS} transfers"
    );
    tauri::async_runtime::block_on(server.stop());
    drop(h);
    drop(rt);
}

/// A receiver that lets in senders without a passphrase (these tests give none).
fn anonymous(o: &mut tidegate::ServerOptions) {
    o.key = tidegate::protocol::handshake::Key::default();
}
