//! What a [`Client`](super::Client) is built from: endpoints, timeouts, exactly-once writes and the
//! default read consistency. Plain data; validated once, in [`Client::connect`](super::Client::connect).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::error::Error;

/// How long establishing one TCP connection may take before that endpoint counts as unreachable.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// The deadline of one call (all its attempts and retries together); etcdctl's default is 5 s.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// How a read is served. Writes always go through the Raft leader.
///
/// | consistency | served by | sees |
/// |---|---|---|
/// | `Linearizable` | any member, after a read-index round with the leader | every write acknowledged before the read started |
/// | `Session` | any member, once it has applied the session's revision | at least this session's own writes and everything it read before; never goes back |
/// | `Serializable` | any member, from its local state | possibly stale data; may go back between members |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    #[default]
    Linearizable,
    Session,
    Serializable,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Session => "session",
            Consistency::Serializable => "serializable",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `linearizable`, `session` or `serializable` (any case), and etcdctl's short forms
/// `l` and `s`.
impl FromStr for Consistency {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "linearizable" | "l" => Ok(Consistency::Linearizable),
            "session" => Ok(Consistency::Session),
            "serializable" | "s" => Ok(Consistency::Serializable),
            _ => Err(Error::InvalidArgument {
                message: format!(
                    "unknown consistency {text:?}: expected linearizable, session or serializable"
                ),
            }),
        }
    }
}

/// A comma-separated endpoint list (`--endpoints` of the CLI and of `quorumdb bench`), blanks
/// dropped.
pub fn split_endpoint_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// Everything a [`Client`](super::Client) needs to connect.
///
/// ```no_run
/// use std::time::Duration;
/// use quorumdb::client::{ClientConfig, Consistency};
///
/// let config = ClientConfig::new(["127.0.0.1:2379", "http://127.0.0.1:22379"])
///     .with_request_timeout(Duration::from_secs(3))
///     .with_consistency(Consistency::Session);
/// assert!(config.exactly_once);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client URLs (`http://host:port`; a bare `host:port` gets `http://`). Members learned from
    /// `Cluster.MemberList` join them.
    pub endpoints: Vec<String>,
    /// Bound on establishing one connection.
    pub connect_timeout: Duration,
    /// Deadline of one call, every attempt and retry included.
    pub request_timeout: Duration,
    /// Number writes so that a write re-sent after an ambiguous failure applies at most once
    /// (see the module docs). Off: an ambiguous write ends at once with [`Error::Unknown`].
    pub exactly_once: bool,
    /// Consistency of reads that do not choose their own ([`GetOptions::consistency`](super::GetOptions::consistency)).
    pub consistency: Consistency,
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            exactly_once: true,
            consistency: Consistency::default(),
        }
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_exactly_once(mut self, exactly_once: bool) -> Self {
        self.exactly_once = exactly_once;
        self
    }

    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The endpoints in canonical form, duplicates removed, or why one is unusable.
    pub(crate) fn validated_endpoints(&self) -> Result<Vec<String>, Error> {
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::InvalidArgument {
                message: "connect and request timeouts must be positive".into(),
            });
        }
        let mut endpoints: Vec<String> = Vec::new();
        for endpoint in &self.endpoints {
            let endpoint = normalize_endpoint(endpoint)?;
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument {
                message: "no endpoints given".into(),
            });
        }
        Ok(endpoints)
    }
}

/// `127.0.0.1:2379` -> `http://127.0.0.1:2379`; trailing slashes dropped. Only plain-text HTTP/2
/// is spoken (QuorumDB serves no TLS yet), so other schemes are refused here rather than failing
/// on every request later.
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidArgument {
        message: format!("endpoint {endpoint:?}: {why}"),
    };
    let (scheme, address) = match endpoint.trim().split_once("://") {
        Some((scheme, address)) => (scheme, address),
        None => ("http", endpoint.trim()),
    };
    if scheme != "http" {
        return Err(invalid(&format!("scheme {scheme}:// is not supported")));
    }
    let address = address.trim_end_matches('/');
    if address.is_empty() {
        return Err(invalid("no host"));
    }
    let url = format!("http://{address}");
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() => Ok(url),
        _ => Err(invalid("not a valid URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_get_http_and_duplicates_go() {
        let config = ClientConfig::new([
            "127.0.0.1:2379",
            " http://127.0.0.1:2379/ ",
            "http://localhost:22379",
        ]);
        assert_eq!(
            config.validated_endpoints().expect("valid"),
            vec!["http://127.0.0.1:2379", "http://localhost:22379"]
        );
    }

    #[test]
    fn unusable_endpoints_are_invalid_arguments() {
        for bad in ["", "https://127.0.0.1:2379", "http://", "http://exa mple:1"] {
            assert!(
                matches!(normalize_endpoint(bad), Err(Error::InvalidArgument { .. })),
                "{bad:?} was accepted"
            );
        }
        let none: [&str; 0] = [];
        assert!(ClientConfig::new(none).validated_endpoints().is_err());
    }

    #[test]
    fn consistency_parses_and_prints_its_names() {
        for consistency in [
            Consistency::Linearizable,
            Consistency::Session,
            Consistency::Serializable,
        ] {
            assert_eq!(
                consistency.to_string().parse::<Consistency>(),
                Ok(consistency)
            );
        }
        assert_eq!("S".parse::<Consistency>(), Ok(Consistency::Serializable));
        assert!("strong".parse::<Consistency>().is_err());
        assert_eq!(Consistency::default(), Consistency::Linearizable);
    }
}
