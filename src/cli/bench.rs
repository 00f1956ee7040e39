//! `tidegate bench`: the main job on a built-in example. Starts a receiver in this process on
//! a loopback port, sends a generated file (or the given paths) over real TCP, checks every
//! received file against the sender's BLAKE3, and prints throughput, CPU time and peak RSS.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use tidegate::{HashJob, Input, Server, ServerOptions, Transfer, TransferOptions};

use super::args::BenchArgs;
use super::args::USAGE;
use super::hash::apply_pipeline_args;
use super::say;

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut options = TransferOptions::default();
    options.pipeline = match apply_pipeline_args(&args.pipeline, options.pipeline.clone()) {
        Ok(o) => o,
        Err(message) => {
            say::error(message);
            return Ok(ExitCode::from(USAGE));
        }
    };
    options.streams = args.streams.max(1);
    // Nothing shows a total here; counting would only add its `stat`s to what is measured.
    options.count_total = false;
    // The received files are checked against the roots the report lists.
    options.file_reports = true;
    if let Err(clash) = tidegate::source::walk::check_names(&args.paths, options.links) {
        say::error(clash);
        return Ok(ExitCode::from(USAGE));
    }
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let sources = if args.paths.is_empty() {
        let file = work.path().join("bench.bin");
        eprintln!(
            "tidegate: writing a {} test file",
            tidegate::progress::human_bytes(args.size)
        );
        generate(&file, args.size)?;
        vec![file]
    } else {
        args.paths.clone()
    };
    let received = work.path().join("received");
    // Authenticated and encrypted, as a real transfer is.
    let key = tidegate::protocol::handshake::Key::from_passphrase(
        &tidegate::protocol::handshake::code_phrase()?,
    );
    options.key = key.clone();
    let mut server_options = ServerOptions::new(&received);
    server_options.key = key;
    let server = Server::bind("127.0.0.1:0".parse()?, server_options).await?;
    let addr = server.local_addr()?;
    let stop = server.shutdown_token();
    let serving = tokio::spawn(server.serve());

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let report = Transfer::new(sources, vec![addr.to_string()])
        .options(options)
        .start()?
        .wait()
        .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    stop.cancel();
    serving.await??;
    if !report.success() {
        super::send::print_report(&report, false, 0)?;
        bail!("the bench transfer failed");
    }
    // Verify independently: hash what arrived and compare with what was sent.
    let inputs: Vec<Input> = report
        .files
        .iter()
        .filter(|f| !f.blake3.is_empty())
        .map(|f| Input::Path(received.join(&f.path)))
        .collect();
    let check = HashJob::new(inputs).start()?.wait().await?;
    let sent: Vec<_> = report
        .files
        .iter()
        .filter(|f| !f.blake3.is_empty())
        .collect();
    for (s, r) in sent.iter().zip(&check.files) {
        match &r.result {
            Ok(root) if root.to_hex().as_str() == s.blake3 => {}
            _ => bail!("received {} does not match what was sent", s.path),
        }
    }
    let mib = report.bytes as f64 / (1024.0 * 1024.0);
    let peak = peak_rss_bytes();
    let dest = report.destinations.first();
    let tls = dest
        .and_then(|d| d.tls.as_ref())
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    let authentication = dest.map_or_else(String::new, |d| d.authentication.to_string());
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::json!({
            "files": sent.len(), "bytes": report.bytes, "seconds": wall,
            "mib_per_s": mib / wall, "cpu_seconds": cpu, "peak_rss_bytes": peak, "verified": true,
            "tls": dest.and_then(|d| d.tls.as_ref()),
            "authentication": dest.map(|d| d.authentication),
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "sent {} {}, {} in {wall:.2} s: {:.0} MiB/s, CPU {cpu:.2} s, peak RSS {} (sender and receiver in one process), verified",
            sent.len(),
            if sent.len() == 1 { "file" } else { "files" },
            tidegate::progress::human_bytes(report.bytes),
            mib / wall,
            peak.map(tidegate::progress::human_bytes).unwrap_or_else(|| "unknown".into()),
        )?;
        writeln!(out, "security: {tls}; authentication: {authentication}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `size` bytes of non-repeating data without holding more than one block.
fn generate(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
        i += 1;
    }
    f.flush()?;
    Ok(())
}

fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// VmHWM of this process.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
