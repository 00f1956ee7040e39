//! The plugin through IPC on Tauri's mock runtime, as an app's JavaScript calls it.

mod common;

use common::Harness;
use serde_json::{json, Value};
use tidegate_testkit::{data, TestServer};

const SENDER: &[&str] = &["tidegate:default"];
const BOTH: &[&str] = &["tidegate:default", "tidegate:receive"];

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tauri::async_runtime::block_on(f)
}

fn kind(e: &Value) -> &str {
    e["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("not a {{kind, message}}: {e}"))
}

#[test]
fn a_granted_command_works_and_one_the_capability_does_not_grant_is_denied() {
    let h = Harness::new(SENDER);
    assert_eq!(h.invoke("transfers", json!({})).unwrap(), json!([]));
    let (channel, _) = h.channel();
    let denied = h
        .invoke("serve_start", json!({"dir": "/tmp", "onEvent": channel}))
        .unwrap_err();
    assert!(
        denied.to_string().contains("not allowed"),
        "denied by the ACL: {denied}"
    );
    assert_eq!(h.jobs(), 0, "nothing started");
    // With the `receive` set, the same call goes through.
    let h = Harness::new(BOTH);
    let dir = tempfile::tempdir().unwrap();
    let (channel, events) = h.channel();
    let started = h
        .invoke(
            "serve_start",
            json!({"dir": dir.path(), "onEvent": channel}),
        )
        .unwrap();
    let id = started["id"].as_u64().unwrap();
    assert!(started["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    h.invoke("serve_stop", json!({"id": id})).unwrap();
    h.wait_for(events, "stopped");
    h.wait_idle();
}

#[test]
fn send_reports_started_increasing_progress_and_a_finished_report() {
    let h = Harness::new(SENDER);
    let server = block_on(TestServer::start_with(anonymous));
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("payload.bin");
    let bytes = data(48 << 20, 7);
    std::fs::write(&file, &bytes).unwrap();
    let (channel, events) = h.channel();
    let id = h
        .invoke(
            "send",
            json!({
                "sources": [file],
                "destinations": [server.addr.to_string()],
                "options": {"memory": "8MiB", "chunkSize": 1048576, "fileReports": true},
                "onProgress": channel,
            }),
        )
        .unwrap();
    let got = h.wait_for(events, "finished");
    let names: Vec<&str> = got.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"finished"), "{names:?}");
    assert_eq!(got[0]["id"], id);
    let progress: Vec<u64> = got
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["doneBytes"].as_u64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "{names:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(
        progress.len() < 48,
        "rate-limited, not one per chunk: {}",
        progress.len()
    );
    let last = got.last().unwrap();
    assert_eq!(last["error"], Value::Null, "{last}");
    let report = &last["report"];
    assert_eq!(report["success"], true);
    assert_eq!(report["bytes"], bytes.len() as u64);
    assert_eq!(report["destinations"][0]["filesDone"], 1);
    assert_eq!(
        report["files"][0]["blake3"],
        blake3::hash(&bytes).to_hex().as_str()
    );
    assert!(std::fs::read(server.root().join("payload.bin")).unwrap() == bytes);
    h.wait_idle();
    block_on(server.stop());
}

#[test]
fn cancel_mid_transfer_gives_cancelled_and_leaves_nothing_under_the_final_name() {
    let h = Harness::new(SENDER);
    let server = block_on(TestServer::start_with(anonymous));
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    std::fs::write(&file, data(48 << 20, 5)).unwrap();
    // A link that stops forwarding after 8 MiB: the transfer is still running when cancelled.
    let proxy = block_on(tidegate_testkit::Proxy::start(server.addr));
    proxy.hold_after(8 << 20);
    let (channel, events) = h.channel();
    let id = h
        .invoke(
            "send",
            json!({"sources": [file], "destinations": [proxy.addr.to_string()], "onProgress": channel}),
        )
        .unwrap();
    block_on(proxy.until_held(std::time::Duration::from_secs(30)));
    h.wait_for(events, "progress");
    let listed = h.invoke("transfers", json!({})).unwrap();
    assert_eq!(listed[0]["id"], id, "{:?}", h.messages(events));
    assert_eq!(listed[0]["destinations"][0], proxy.addr.to_string());
    assert_eq!(listed[0]["state"], "running");
    h.invoke("cancel", json!({"id": id})).unwrap();
    proxy.release();
    let got = h.wait_for(events, "finished");
    let last = got.last().unwrap();
    assert_eq!(kind(&last["error"]), "cancelled", "{last}");
    assert_eq!(last["report"]["cancelled"], true);
    assert!(!server.root().join("big.bin").exists());
    h.wait_idle();
    assert_eq!(h.invoke("transfers", json!({})).unwrap(), json!([]));
    let gone = h.invoke("cancel", json!({"id": id})).unwrap_err();
    assert_eq!(kind(&gone), "notFound");
    block_on(server.stop());
}

#[test]
fn an_unreachable_destination_and_a_malformed_one_give_their_kinds() {
    let h = Harness::new(SENDER);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let (channel, events) = h.channel();
    h.invoke(
        "send",
        json!({
            "sources": [file],
            "destinations": [tidegate_testkit::unused_addr()],
            "options": {"retryForMs": 500, "connectTimeoutMs": 200},
            "onProgress": channel,
        }),
    )
    .unwrap();
    let got = h.wait_for(events, "finished");
    let last = got.last().unwrap();
    assert_eq!(kind(&last["error"]), "unreachable", "{last}");
    assert_eq!(
        kind(&last["report"]["destinations"][0]["error"]),
        "unreachable"
    );

    let (channel, _) = h.channel();
    let bad = h
        .invoke(
            "send",
            json!({"sources": [file], "destinations": ["no-port-here"], "onProgress": channel}),
        )
        .unwrap_err();
    assert_eq!(kind(&bad), "invalidArgument", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("no-port-here"));
    h.wait_idle();
}

#[test]
fn a_wrong_key_gives_authentication_and_no_key_is_ever_shown() {
    let h = Harness::new(SENDER);
    let server = block_on(TestServer::start_with(|o| {
        o.key = tidegate::protocol::handshake::Key::from_passphrase("correct horse")
    }));
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let (channel, events) = h.channel();
    h.invoke(
        "send",
        json!({"sources": [file], "destinations": [server.addr.to_string()],
               "options": {"key": "battery staple"}, "onProgress": channel}),
    )
    .unwrap();
    let got = h.wait_for(events, "finished");
    assert_eq!(kind(&got.last().unwrap()["error"]), "authentication");
    let all = serde_json::to_string(&got).unwrap();
    assert!(!all.contains("battery") && !all.contains("horse"), "{all}");
    let (channel, _) = h.channel();
    let empty = h
        .invoke(
            "send",
            json!({"sources": [file], "destinations": [server.addr.to_string()],
                   "options": {"key": ""}, "onProgress": channel}),
        )
        .unwrap_err();
    assert_eq!(kind(&empty), "invalidArgument");
    h.wait_idle();
    block_on(server.stop());
}

#[test]
fn a_receiver_without_a_key_makes_a_code_phrase_and_refuses_senders_without_it() {
    let h = Harness::new(BOTH);
    let dir = tempfile::tempdir().unwrap();
    let (channel, serve_events) = h.channel();
    let receiver = h
        .invoke(
            "serve_start",
            json!({"dir": dir.path(), "onEvent": channel}),
        )
        .unwrap();
    let phrase = receiver["codePhrase"].as_str().unwrap().to_owned();
    let groups: Vec<&str> = phrase.split('-').collect();
    assert_eq!(groups.len(), 4, "{phrase}");
    assert!(groups.iter().all(|g| g.len() == 4), "{phrase}");
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, data(70_000, 4)).unwrap();
    let send = |to: &Value, options: Value| {
        let (channel, events) = h.channel();
        h.invoke(
            "send",
            json!({"sources": [file], "destinations": [to],
                   "options": options, "onProgress": channel}),
        )
        .unwrap();
        h.wait_for(events, "finished").last().unwrap().clone()
    };
    let keyless = send(&receiver["address"], json!({"retryForMs": 0}));
    assert_eq!(kind(&keyless["error"]), "authentication", "{keyless}");
    assert!(
        !dir.path().join("f").exists(),
        "nothing from a keyless sender"
    );
    let with_phrase = send(&receiver["address"], json!({"key": phrase}));
    assert_eq!(with_phrase["report"]["success"], true, "{with_phrase}");
    assert_eq!(
        std::fs::read(dir.path().join("f")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    h.invoke("serve_stop", json!({"id": receiver["id"]}))
        .unwrap();
    h.wait_for(serve_events, "stopped");

    // insecureNoAuth lets a keyless sender in and makes no phrase; with a key it is an error.
    let open = tempfile::tempdir().unwrap();
    let (channel, serve_events) = h.channel();
    let receiver = h
        .invoke(
            "serve_start",
            json!({"dir": open.path(), "insecureNoAuth": true, "onEvent": channel}),
        )
        .unwrap();
    assert_eq!(receiver["codePhrase"], Value::Null);
    let keyless = send(&receiver["address"], json!({}));
    assert_eq!(keyless["report"]["success"], true, "{keyless}");
    assert!(open.path().join("f").exists());
    h.invoke("serve_stop", json!({"id": receiver["id"]}))
        .unwrap();
    h.wait_for(serve_events, "stopped");
    let (channel, _) = h.channel();
    let both = h
        .invoke(
            "serve_start",
            json!({"dir": open.path(), "key": "k", "insecureNoAuth": true, "onEvent": channel}),
        )
        .unwrap_err();
    assert_eq!(kind(&both), "invalidArgument");
    h.wait_idle();
}

#[test]
fn missing_or_mistyped_arguments_are_invalid_arguments() {
    let h = Harness::new(BOTH);
    let (channel, _) = h.channel();
    let cases = [
        (
            "send",
            json!({"destinations": ["h:1"], "onProgress": channel}),
        ),
        (
            "send",
            json!({"sources": "not-a-list", "destinations": ["h:1"], "onProgress": channel}),
        ),
        ("send", json!({"sources": ["/"], "destinations": ["h:1"]})),
        (
            "send",
            json!({"sources": ["/"], "destinations": ["h:1"], "onProgress": 5}),
        ),
        (
            "send",
            json!({"sources": ["/"], "destinations": ["h:1"], "options": {"memry": 1}, "onProgress": channel}),
        ),
        (
            "send",
            json!({"sources": ["/"], "destinations": ["h:1"], "options": {"memory": "lots"}, "onProgress": channel}),
        ),
        (
            "send",
            json!({"sources": ["/"], "destinations": ["h:1"], "options": {"memory": 1024}, "onProgress": channel}),
        ),
        (
            "send",
            json!({"sources": [], "destinations": ["h:1"], "onProgress": channel}),
        ),
        ("cancel", json!({})),
        ("cancel", json!({"id": "seven"})),
        ("hash", json!({"paths": [1, 2], "onProgress": channel})),
        (
            "serve_start",
            json!({"dir": "/tmp", "listen": "nowhere", "onEvent": channel}),
        ),
        ("serve_stop", json!({"id": -1})),
    ];
    for (command, args) in cases {
        let e = h.invoke(command, args.clone()).unwrap_err();
        assert_eq!(kind(&e), "invalidArgument", "{command} {args}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let (channel, _) = h.channel();
    let missing = h
        .invoke(
            "send",
            json!({"sources": ["/no/such/source"], "destinations": ["h:1"], "onProgress": channel}),
        )
        .unwrap_err();
    assert_eq!(kind(&missing), "notFound");
    assert_eq!(h.jobs(), 0);
}

#[test]
fn hash_returns_the_roots() {
    let h = Harness::new(SENDER);
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a");
    let b = src.path().join("b");
    std::fs::write(&a, data(9 << 20, 1)).unwrap();
    std::fs::write(&b, b"").unwrap();
    let (channel, events) = h.channel();
    let got = h
        .invoke(
            "hash",
            json!({"paths": [a, b, src.path().join("c")], "onProgress": channel}),
        )
        .unwrap();
    assert_eq!(
        got[0]["blake3"],
        blake3::hash(&std::fs::read(&a).unwrap()).to_hex().as_str()
    );
    assert_eq!(got[1]["blake3"], blake3::hash(b"").to_hex().as_str());
    assert_eq!(kind(&got[2]["error"]), "io");
    let names: Vec<Value> = h
        .messages(events)
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(names.first(), Some(&json!("started")));
    assert_eq!(names.last(), Some(&json!("finished")));
    h.wait_idle();
}

#[test]
fn a_receiver_started_through_ipc_receives_a_transfer_and_stops() {
    let h = Harness::new(BOTH);
    let dir = tempfile::tempdir().unwrap();
    let (channel, serve_events) = h.channel();
    let receiver = h
        .invoke(
            "serve_start",
            json!({"dir": dir.path(), "listen": "127.0.0.1:0", "key": "k", "onEvent": channel}),
        )
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("big"), data(5 << 20, 3)).unwrap();
    for i in 0..50 {
        std::fs::write(tree.join(format!("sub/{i}")), data(100 + i, i as u64)).unwrap();
    }
    let (channel, send_events) = h.channel();
    h.invoke(
        "send",
        json!({"sources": [tree], "destinations": [receiver["address"]],
               "options": {"key": "k"}, "onProgress": channel}),
    )
    .unwrap();
    let got = h.wait_for(send_events, "finished");
    assert_eq!(got.last().unwrap()["report"]["success"], true, "{got:?}");
    tidegate_testkit::assert_same_tree(&tree, &dir.path().join("tree"));
    h.invoke("serve_stop", json!({"id": receiver["id"]}))
        .unwrap();
    let told = h.wait_for(serve_events, "stopped");
    assert_eq!(told.last().unwrap()["error"], Value::Null);
    let activity: Vec<&Value> = told.iter().filter(|e| e["event"] == "activity").collect();
    let last = activity.last().unwrap();
    assert_eq!(last["filesTotal"], 51, "{told:?}");
    assert_eq!(last["bytesTotal"], (5 << 20) + (100..150).sum::<u64>());
    let listed: usize = activity
        .iter()
        .map(|a| a["received"].as_array().unwrap().len())
        .sum();
    let unlisted: u64 = activity
        .iter()
        .map(|a| a["unlisted"].as_u64().unwrap())
        .sum();
    assert_eq!(
        listed as u64 + unlisted,
        51,
        "every file is listed or counted"
    );
    assert!(activity
        .iter()
        .any(|a| !a["connected"].as_array().unwrap().is_empty()));
    assert!(activity.len() < 60, "rate-limited: {}", activity.len());
    h.wait_idle();
}

/// A receiver that lets in senders without a passphrase (these tests give none).
fn anonymous(o: &mut tidegate::ServerOptions) {
    o.key = tidegate::protocol::handshake::Key::default();
}
