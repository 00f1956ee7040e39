//! `tidegate hash`: print or check BLAKE3 sums in b3sum's format.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tidegate::{HashJob, HashReport, Input, PipelineOptions};

use super::args::USAGE;
use super::args::{HashArgs, PipelineArgs};
use super::progress;
use super::say;

pub(crate) async fn run(args: HashArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let options = match pipeline_options(&args.pipeline) {
        Ok(o) => o,
        Err(message) => {
            say::error(message);
            return Ok(ExitCode::from(USAGE));
        }
    };
    let files = if args.files.is_empty() {
        vec!["-".to_owned()]
    } else {
        args.files.clone()
    };
    if args.check {
        check(&args, options, &files).await
    } else {
        let mut objects = Objects::new(&args);
        let mut inputs = Vec::with_capacity(files.len());
        for f in &files {
            match Input::from_arg(f) {
                Input::Path(p) => match objects.input(&p) {
                    Ok(input) => inputs.push(input),
                    Err(Unusable::Line(why) | Unusable::Store(why)) => {
                        say::error(why);
                        return Ok(ExitCode::from(USAGE));
                    }
                },
                other => inputs.push(other),
            }
        }
        let report = hash(inputs, options, &args, &mut objects).await?;
        let mut out = std::io::stdout().lock();
        for f in &report.files {
            match &f.result {
                Ok(root) if args.json => writeln!(
                    out,
                    "{}",
                    json!({"path": f.input.to_string(), "blake3": root.to_hex().as_str(), "bytes": f.bytes})
                )?,
                Ok(root) => writeln!(out, "{}", b3sum_line(root, f.input.display_path()))?,
                Err(e) if args.json => writeln!(
                    out,
                    "{}",
                    json!({"path": f.input.to_string(), "error": e.to_string()})
                )?,
                Err(e) => say::error(e),
            }
        }
        summary(&mut out, &report, args.json, verbose)?;
        Ok(exit_code(report.failures() == 0 && !report.cancelled))
    }
}

/// Turns the shared pipeline flags into hashing options, or a usage message.
pub(crate) fn pipeline_options(args: &PipelineArgs) -> Result<PipelineOptions, String> {
    apply_pipeline_args(args, HashJob::default_options())
}

/// Applies the shared pipeline flags over `options`, or returns a usage message.
pub(crate) fn apply_pipeline_args(
    args: &PipelineArgs,
    mut options: PipelineOptions,
) -> Result<PipelineOptions, String> {
    if let Some(m) = args.memory {
        options.memory_bytes = m;
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    if let Some(c) = args.chunk_size {
        options.chunk_size = c;
    }
    options.threads = args.threads;
    options.validate().map_err(|e| e.to_string())?;
    Ok(options)
}

async fn hash(
    inputs: Vec<Input>,
    options: PipelineOptions,
    args: &HashArgs,
    objects: &mut Objects,
) -> anyhow::Result<HashReport> {
    // Files' sizes now; objects' sizes, if any, from their store while they are read.
    let local = inputs.iter().try_fold(0u64, |sum, i| match i {
        Input::Path(p) => std::fs::metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| sum + m.len()),
        Input::Stream(_) => Some(sum),
        Input::Stdin => None,
    });
    let streams = inputs.iter().any(|i| matches!(i, Input::Stream(_)));
    let total = local.filter(|_| !streams);
    let mut job = HashJob::new(inputs).options(options);
    let bar = progress::wanted(args.no_progress || args.json, total).then(|| {
        let later = local
            .filter(|_| streams)
            .and_then(|local| objects.total_size(local));
        progress::spawn_bar(job.subscribe(), total, later)
    });
    let handle = job.start().context("starting the hash job")?;
    let cancel = ctrl_c_cancels(&handle);
    let report = handle
        .wait()
        .await
        .context("the hash job stopped unexpectedly")?;
    cancel.abort();
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    Ok(report)
}

/// Ctrl-C cancels the job; it then reports what it finished.
fn ctrl_c_cancels(handle: &tidegate::HashHandle) -> tokio::task::JoinHandle<()> {
    let token = handle.cancel_token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            token.cancel();
        }
    })
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn summary(
    out: &mut impl Write,
    report: &HashReport,
    json: bool,
    verbose: u8,
) -> std::io::Result<()> {
    let secs = report.elapsed.as_secs_f64();
    let mib_s = report.bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9);
    if json {
        writeln!(
            out,
            "{}",
            json!({"summary": {"files": report.files.len(), "failed": report.failures(),
                "bytes": report.bytes, "seconds": secs, "mib_per_s": mib_s, "cancelled": report.cancelled}})
        )?;
    } else if verbose > 0 || report.cancelled {
        eprintln!(
            "{} files, {} in {secs:.2} s ({mib_s:.0} MiB/s){}",
            report.files.len(),
            tidegate::progress::human_bytes(report.bytes),
            if report.cancelled { ", cancelled" } else { "" }
        );
    }
    Ok(())
}

/// A line as b3sum prints it. Paths with a backslash or newline are escaped and the line
/// starts with a backslash, as b3sum does, so `--check` can read it back.
fn b3sum_line(root: &blake3::Hash, path: &Path) -> String {
    b3sum_hex_line(root.to_hex().as_str(), &path.to_string_lossy())
}

/// `<hex>  <name>` as b3sum prints it: a name with a backslash or a newline is escaped, and the
/// line then starts with a backslash. `send -v` prints its roots the same way, so those lines
/// can be checked against the received tree with `tidegate hash --check` run in it.
pub(crate) fn b3sum_hex_line(hex: &str, name: &str) -> String {
    if name.contains(['\\', '\n']) {
        let escaped = name.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{hex}  {escaped}")
    } else {
        format!("{hex}  {name}")
    }
}

/// Why a checkfile line cannot be checked.
enum Unusable {
    /// This line is wrong; the others are still checked.
    Line(String),
    /// No line naming an object can be checked (no credentials for the store).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    Store(String),
}

/// Turns checkfile paths into inputs: `s3://BUCKET/KEY` is an object, read with the store's
/// client (made at the first such line), anything else a file.
struct Objects {
    #[cfg(feature = "s3")]
    options: Option<tidegate::objstore::S3Options>,
    #[cfg(feature = "s3")]
    reader: Option<tidegate::objstore::ObjectReader>,
}

impl Objects {
    #[cfg_attr(not(feature = "s3"), allow(unused_variables))]
    fn new(args: &HashArgs) -> Self {
        Objects {
            #[cfg(feature = "s3")]
            options: Some(args.s3.options()),
            #[cfg(feature = "s3")]
            reader: None,
        }
    }

    /// `local` plus the sizes of the objects made into inputs, looked up in their store.
    #[cfg_attr(not(feature = "s3"), allow(unused_variables, clippy::unused_self))]
    fn total_size(&mut self, local: u64) -> Option<progress::LaterTotal> {
        #[cfg(feature = "s3")]
        if let Some(reader) = &mut self.reader {
            let objects = reader.total_size();
            return Some(Box::pin(async move { Some(local + objects.await?) }));
        }
        None
    }

    fn input(&mut self, path: &Path) -> Result<Input, Unusable> {
        let Some(url) = path.to_str().filter(|p| p.starts_with("s3://")) else {
            return Ok(Input::Path(path.to_path_buf()));
        };
        #[cfg(feature = "s3")]
        {
            use tidegate::objstore::{ObjectReader, ObjectUrlError};
            let options = &mut self.options;
            let reader = self
                .reader
                .get_or_insert_with(|| ObjectReader::new(options.take().unwrap_or_default()));
            reader.input(url).map_err(|e| match e {
                ObjectUrlError::Store(e) => Unusable::Store(e.to_string()),
                e => Unusable::Line(e.to_string()),
            })
        }
        #[cfg(not(feature = "s3"))]
        Err(Unusable::Line(format!(
            "{url}: this build has no object-store support (feature `s3`)"
        )))
    }
}

/// One parsed line of a checkfile.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    hash: blake3::Hash,
    path: PathBuf,
}

/// Parses `<64 hex>  <path>`, with b3sum's backslash escaping.
fn parse_line(line: &str) -> Result<Expected, String> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hex, path) = line
        .split_once("  ")
        .ok_or_else(|| "expected '<hash>  <path>'".to_owned())?;
    let hash = blake3::Hash::from_hex(hex).map_err(|e| format!("bad hash: {e}"))?;
    let path = if escaped {
        unescape(path)?
    } else {
        path.to_owned()
    };
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    Ok(Expected {
        hash,
        path: PathBuf::from(path),
    })
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => {
                return Err(format!(
                    "bad escape '\\{}'",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

async fn check(
    args: &HashArgs,
    options: PipelineOptions,
    checkfiles: &[String],
) -> anyhow::Result<ExitCode> {
    let mut expected = Vec::new();
    let mut inputs = Vec::new();
    let mut malformed = 0usize;
    let mut objects = Objects::new(args);
    for checkfile in checkfiles {
        let reader: Box<dyn BufRead> = if checkfile == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            let f =
                std::fs::File::open(checkfile).with_context(|| format!("opening {checkfile}"))?;
            Box::new(BufReader::new(f))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {checkfile}"))?;
            if line.is_empty() {
                continue;
            }
            let parsed = parse_line(&line).map_err(Unusable::Line);
            match parsed.and_then(|e| Ok((objects.input(&e.path)?, e))) {
                Ok((input, e)) => {
                    inputs.push(input);
                    expected.push(e);
                }
                Err(Unusable::Line(why)) => {
                    malformed += 1;
                    say::error(format_args!("{checkfile}:{}: {why}", n + 1));
                }
                Err(Unusable::Store(why)) => {
                    say::error(why);
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    let report = hash(inputs, options, args, &mut objects).await?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for (want, got) in expected.iter().zip(&report.files) {
        let path = want.path.display();
        let outcome = match &got.result {
            Ok(root) if *root == want.hash => "OK".to_owned(),
            Ok(_) => "FAILED".to_owned(),
            Err(e) => format!("FAILED ({e})"),
        };
        if outcome != "OK" {
            failed += 1;
        }
        if args.json {
            writeln!(
                out,
                "{}",
                json!({"path": path.to_string(), "ok": outcome == "OK", "result": outcome})
            )?;
        } else {
            writeln!(out, "{path}: {outcome}")?;
        }
    }
    if failed > 0 {
        say::error(format_args!(
            "{failed} of {} files did not match",
            expected.len()
        ));
    }
    Ok(exit_code(
        failed == 0 && malformed == 0 && !report.cancelled,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let h = blake3::hash(b"x");
        for name in ["plain.txt", "with space", "back\\slash", "new\nline"] {
            let line = b3sum_line(&h, Path::new(name));
            assert_eq!(
                parse_line(&line).unwrap(),
                Expected {
                    hash: h,
                    path: PathBuf::from(name)
                }
            );
        }
        assert!(parse_line("nothex  file").is_err());
        assert!(parse_line(h.to_hex().as_str()).is_err());
        assert!(parse_line(&format!("\\{}  bad\\q", h.to_hex())).is_err());
    }
}
