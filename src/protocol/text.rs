//! Text a peer sends (error messages): made safe to show before anything shows it. A
//! receiver's message reaches the sender's terminal, its JSON report and an app's UI, so an
//! escape sequence in it must not reach a terminal as one.

/// `bytes` as text, invalid UTF-8 replaced and control characters (escape sequences, line
/// breaks, bidirectional overrides' neighbours among them) shown escaped, as `\u{1b}`.
pub fn peer_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if !text.chars().any(needs_escape) {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Control characters, and the format characters that reorder or hide text (bidirectional
/// controls, zero-width ones).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_line_breaks_are_shown_escaped() {
        assert_eq!(peer_text(b"disk full"), "disk full");
        assert_eq!(
            peer_text(b"\x1b[2J\x1b]0;owned\x07gone\r\nfake line"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}gone\\u{d}\\u{a}fake line"
        );
        assert_eq!(peer_text("a\u{202e}b".as_bytes()), "a\\u{202e}b");
        assert_eq!(peer_text(b"caf\xc3\xa9 \xff"), "café \u{fffd}");
        // C1 controls, e.g. CSI as one code point.
        assert_eq!(peer_text("\u{9b}31m".as_bytes()), "\\u{9b}31m");
    }
}
