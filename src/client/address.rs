//! What a destination address may look like: `HOST:PORT`, checked before anything is dialled,
//! so that a mistyped `--to` fails at once with a clear error instead of being retried as if
//! the receiver were down. Names are resolved when dialling (and a name that does not resolve
//! yet is retried like any receiver that cannot be reached).

use std::net::SocketAddrV6;

/// A destination that is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad destination {addr:?}: {why}")]
pub struct AddressError {
    /// The destination as given.
    pub addr: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Checks that `addr` is `HOST:PORT`: a host name, an IPv4 address or a bracketed IPv6
/// address (`[::1]:9000`, `[fe80::1%2]:9000` with a numeric scope), and a port from 1 to
/// 65535.
///
/// # Errors
/// [`AddressError`] saying what is missing or malformed.
pub fn check(addr: &str) -> Result<(), AddressError> {
    let bad = |why| {
        Err(AddressError {
            addr: addr.to_owned(),
            why,
        })
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return bad("expected [IPv6]:PORT");
        };
        if format!("[{v6}]:1").parse::<SocketAddrV6>().is_err() {
            return bad("not an IPv6 address between the brackets");
        }
        (v6, port)
    } else {
        let Some((host, port)) = addr.rsplit_once(':') else {
            return bad("expected HOST:PORT (the port is missing)");
        };
        if host.contains(':') {
            return bad("an IPv6 address goes in brackets: [ADDRESS]:PORT");
        }
        (host, port)
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return bad("not a host name or address");
    }
    match port.parse::<u16>() {
        Ok(0) => bad("port 0 cannot be dialled"),
        Ok(_) => Ok(()),
        Err(_) => bad("the port is not a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses_pass() {
        for addr in [
            "127.0.0.1:9000",
            "localhost:1",
            "receiver.example.org:65535",
            "[::1]:9000",
            "[fe80::1%2]:9000",
        ] {
            assert_eq!(check(addr), Ok(()), "{addr}");
        }
    }

    #[test]
    fn each_mistake_is_named() {
        let why = |addr: &str| check(addr).unwrap_err().why;
        assert_eq!(why("receiver"), "expected HOST:PORT (the port is missing)");
        assert_eq!(why(":9000"), "the host is missing");
        assert_eq!(why("host:"), "the port is not a number from 1 to 65535");
        assert_eq!(
            why("host:65536"),
            "the port is not a number from 1 to 65535"
        );
        assert_eq!(why("host:http"), "the port is not a number from 1 to 65535");
        assert_eq!(why("host:0"), "port 0 cannot be dialled");
        assert_eq!(
            why("::1:9000"),
            "an IPv6 address goes in brackets: [ADDRESS]:PORT"
        );
        assert_eq!(why("[::1]9000"), "expected [IPv6]:PORT");
        for addr in ["[nope]:9000", "[1.2.3.4]:9000", "[fe80::1%eth0]:9000"] {
            assert_eq!(
                why(addr),
                "not an IPv6 address between the brackets",
                "{addr}"
            );
        }
        assert_eq!(why("my host:9000"), "not a host name or address");
        assert_eq!(why("host/x:9000"), "not a host name or address");
    }

    #[test]
    fn the_error_names_the_address() {
        let e = check("receiver").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad destination \"receiver\": expected HOST:PORT (the port is missing)"
        );
    }
}
