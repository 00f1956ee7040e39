//! Progress events shared by every front end (CLI bars, `--json`, Tauri), and the byte-size
//! formatting and parsing they use.

use serde::Serialize;

/// One progress event. Serialises as a JSON object tagged by `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Progress {
    /// A file was opened.
    FileStarted {
        /// Position in the job's input order.
        file: u64,
        /// The path as given.
        path: String,
        /// Its size when opened, when known (not for streams).
        size: Option<u64>,
    },
    /// Bytes processed so far; sent at most once per `progress_interval`, and once at the end.
    Bytes {
        /// Bytes done in all files.
        done_bytes: u64,
        /// Bytes expected in all files, when known up front.
        total_bytes: Option<u64>,
        /// Files finished (successfully or not).
        files_done: u64,
        /// Milliseconds since the job started.
        elapsed_ms: u64,
    },
    /// A file finished.
    FileDone {
        /// Position in the job's input order.
        file: u64,
        /// The path as given.
        path: String,
        /// Its length.
        bytes: u64,
        /// Its BLAKE3 root, in hex.
        blake3: String,
    },
    /// A file failed; the job goes on with the others.
    FileFailed {
        /// Position in the job's input order.
        file: u64,
        /// The path as given.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// A receiver became unreachable, reachable again, or lost a connection (transfers only).
    Connection {
        /// The receiver, as given.
        address: String,
        /// What happened.
        state: ConnectionState,
        /// Why, for `unreachable` and `dropped`.
        error: Option<String>,
        /// For `connected`: attempts that failed since `unreachable`.
        failed_attempts: u64,
    },
}

/// What [`Progress::Connection`] reports. Serialises in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConnectionState {
    /// No connection to the receiver is up and an attempt failed; retrying with backoff until
    /// the retry deadline (said once, until it is reachable again).
    Unreachable,
    /// A connection is up again after `Unreachable`.
    Connected,
    /// A live connection dropped; it is redialled and what it had not confirmed is resent.
    Dropped,
}

/// Rate limit for byte-count events: due at most once per interval, and always at the end.
/// A count held back by the limit is owed: [`Ticker::owed`] says when to send it, so that the
/// last count before a stall is not kept until the next event.
#[derive(Debug, Clone)]
pub(crate) struct Ticker {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    owed: bool,
}

impl Ticker {
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Ticker {
            interval,
            last: None,
            owed: false,
        }
    }

    /// Whether to send an event now (`last`: the final one, always sent).
    pub(crate) fn due(&mut self, last: bool) -> bool {
        let now = std::time::Instant::now();
        if !last && self.last.is_some_and(|t| now - t < self.interval) {
            self.owed = true;
            return false;
        }
        self.last = Some(now);
        self.owed = false;
        true
    }

    /// When a held-back event falls due, if one is owed.
    pub(crate) fn owed(&self) -> Option<std::time::Instant> {
        self.last.filter(|_| self.owed).map(|t| t + self.interval)
    }
}

/// Sleeps until `at` ([`Ticker::owed`]); never returns for `None`.
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Formats a byte count with binary units: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a byte count: a number with an optional binary suffix (`K`, `KiB`, `M`, `MiB`,
/// `G`, `GiB`, case-insensitive; `KB` etc. are read as binary too).
///
/// # Errors
/// A message naming the bad input.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 64MiB)"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_held_back_by_the_rate_limit_is_owed_until_sent() {
        let mut ticker = Ticker::new(std::time::Duration::from_secs(3600));
        assert!(ticker.due(false));
        assert_eq!(ticker.owed(), None);
        assert!(!ticker.due(false));
        let owed = ticker.owed().expect("owed");
        assert!(owed > std::time::Instant::now());
        assert!(ticker.due(true));
        assert_eq!(ticker.owed(), None);
    }

    #[test]
    fn sizes_round_trip() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("16k"), Ok(16 << 10));
        assert_eq!(parse_bytes("7"), Ok(7));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999999T").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    }

    #[test]
    fn events_serialise_tagged() {
        let e = Progress::FileFailed {
            file: 3,
            path: "a b".into(),
            error: "gone".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"file_failed","file":3,"path":"a b","error":"gone"}"#
        );
    }
}
