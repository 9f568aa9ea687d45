//! The browser `Origin` allow-list (`ALLOWED_ORIGINS`): entries and
//! request origins are normalized the same way before they are compared.

use std::collections::HashSet;

use super::AuthError;

pub(super) fn allowed_origins(list: &[String]) -> Result<HashSet<String>, AuthError> {
    let origins = list
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            normalize_origin(o).map_err(|reason| AuthError::BadOrigin {
                origin: o.to_owned(),
                reason,
            })
        })
        .collect::<Result<HashSet<_>, _>>()?;
    if origins.is_empty() {
        return Err(AuthError::NoOrigins);
    }
    Ok(origins)
}

/// `scheme://host[:port]` with scheme and host in lower case, the scheme's
/// default port (80 for http/ws, 443 for https/wss) dropped, and one
/// trailing `/` dropped. Anything that is not an origin is an error.
pub fn normalize_origin(raw: &str) -> Result<String, &'static str> {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://").ok_or("no `scheme://`")?;
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err("bad scheme");
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err("no host");
    }
    if authority
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return Err("an origin has no path, query, fragment or user");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inside, after) = v6.split_once(']').ok_or("unclosed `[`")?;
            if inside.is_empty() {
                return Err("no host");
            }
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or("junk after `]`")?),
            };
            (format!("[{}]", inside.to_ascii_lowercase()), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (authority.to_ascii_lowercase(), None),
        },
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = match port {
        None => None,
        Some(port) => {
            let port: u16 = port
                .parse()
                .map_err(|_| "the port is not a number from 0 to 65535")?;
            let default = match scheme.as_str() {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            };
            (default != Some(port)).then_some(port)
        }
    };
    Ok(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        for (raw, want) in [
            ("HTTP://Example.com:80/", "http://example.com"),
            ("http://example.com", "http://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("wss://Example.com:443/", "wss://example.com"),
            ("ws://example.com:80", "ws://example.com"),
            ("https://example.com:80", "https://example.com:80"),
            ("http://localhost:8050", "http://localhost:8050"),
            ("http://[::1]:8050", "http://[::1]:8050"),
            ("http://[::1]:80/", "http://[::1]"),
            ("chrome-extension://ABCDEF", "chrome-extension://abcdef"),
            ("  https://a.example  ", "https://a.example"),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "example.com",
            "null",
            "http://",
            "http:///",
            "http://example.com/path",
            "http://example.com?q",
            "http://user@example.com",
            "http://example.com:http",
            "http://example.com:70000",
            "http://[::1",
            "1http://example.com",
            "http://:80",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
