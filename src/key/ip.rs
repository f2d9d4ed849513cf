//! [`ClientIp`]: a server's client address as a key, read from the connection's peer
//! address and, behind trusted proxies, from `X-Forwarded-For` or `Forwarded`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use http::{header::FORWARDED, HeaderMap, HeaderName};

use super::{Key, KeyError, KeyExtractor, RequestRef};
use crate::vocabulary::{ConfigError, LayerKind};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's IP address as a key: a server's per-client bucket.
///
/// The address comes from the connection (the peer), which the server puts in the
/// request's extensions:
///
/// - **axum**: serve with `into_make_service_with_connect_info::<SocketAddr>()` and
///   turn on ratewise's `axum` feature: the key reads axum's `ConnectInfo<SocketAddr>`.
/// - **hyper** (or any server): insert the accepted connection's `SocketAddr` into each
///   request's extensions, e.g. `req.extensions_mut().insert(peer)` in the
///   `service_fn` of the accept loop (where `let (stream, peer) = listener.accept().await?`).
///
/// A request without a peer address cannot be keyed: [`try_key`](KeyExtractor::try_key)
/// fails, so a [`RateLimitLayer`](crate::RateLimitLayer) answers it `500` (reject mode)
/// and logs the error once, at the first such request. It never shares one bucket among
/// every client.
///
/// Behind proxies, [`ClientIp::builder`] reads the address the proxies forward, walking
/// the chain from the right (the peer, then the header's last entry, and so on) and
/// skipping proxies it trusts: by count
/// ([`trusted_proxy_count`](ClientIpBuilder::trusted_proxy_count)) or by address
/// ([`trusted_proxy`](ClientIpBuilder::trusted_proxy), an address or a CIDR network).
/// The first address that is not a trusted proxy is the client: what a client writes
/// in the header itself stays on the left and is never read, and a peer that is not
/// trusted is the client whatever its headers say. A malformed entry, an `unknown` or
/// obfuscated `Forwarded` node, or a chain shorter than the trusted count falls back to
/// the peer. Only one header is read, `X-Forwarded-For` by default or RFC 7239
/// `Forwarded` ([`forwarded`](ClientIpBuilder::forwarded)): read the one your proxy
/// writes, since the other passes through it untouched, as the client wrote it.
///
/// IPv6 clients are keyed by network, `/64` by default
/// ([`ipv6_prefix`](ClientIpBuilder::ipv6_prefix)): one host usually holds a whole
/// `/64`. IPv4 clients are keyed by address (`/32`,
/// [`ipv4_prefix`](ClientIpBuilder::ipv4_prefix)), and IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.7`) as the IPv4 address they are. Keys read `192.0.2.7`,
/// `198.51.100.0/24` or `2001:db8:1:2::/64`.
///
/// ```
/// use std::net::SocketAddr;
/// use http::Request;
/// use ratewise::key::{ClientIp, Key, KeyExtractor};
///
/// let behind_nginx = ClientIp::builder().trusted_proxy("10.0.0.0/8").build()?;
///
/// let mut req = Request::get("/").header("x-forwarded-for", "6.6.6.6, 203.0.113.7").body(()).unwrap();
/// req.extensions_mut().insert("10.1.2.3:40000".parse::<SocketAddr>().unwrap()); // the proxy
/// assert_eq!(behind_nginx.key_of(&req), Key::from("203.0.113.7"));
///
/// // The same header from a client that is not a trusted proxy is ignored.
/// req.extensions_mut().insert("198.51.100.9:5000".parse::<SocketAddr>().unwrap());
/// assert_eq!(behind_nginx.key_of(&req), Key::from("198.51.100.9"));
///
/// // IPv6 clients are keyed by their /64.
/// req.extensions_mut().insert("[2001:db8:1:2::abcd]:5000".parse::<SocketAddr>().unwrap());
/// assert_eq!(ClientIp::peer().key_of(&req), Key::from("2001:db8:1:2::/64"));
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trust: Trust,
    header: Header,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    /// Whether [`KeyExtractor::key`] has logged a request it could not key.
    warned: Arc<AtomicBool>,
}

/// Which hops are trusted proxies.
#[derive(Debug, Clone)]
enum Trust {
    /// None: the peer is the client.
    Nobody,
    /// The last `n` hops, the peer first.
    Count(u32),
    /// Hops whose address is in one of these networks.
    Networks(Vec<Network>),
}

/// The header the proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    XForwardedFor,
    Forwarded,
}

/// An IP network: an address masked to its first `len` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    len: u8,
}

impl Network {
    /// `"10.0.0.0/8"`, `"2001:db8::/32"` or a single address (`"10.0.0.1"`).
    /// Parsed here rather than with a crate: it is an address, a slash and a number.
    fn parse(text: &str) -> Option<Network> {
        let (addr, len) = match text.trim().split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text.trim(), None),
        };
        let addr = canonical(addr.parse::<IpAddr>().ok()?);
        let bits = bits_of(addr);
        let len = match len {
            None => bits,
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                let len = len.parse::<u8>().ok()?;
                // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 network.
                let len = match text.contains(':') {
                    true if bits == 32 => len.checked_sub(96)?,
                    _ => len,
                };
                (len <= bits).then_some(len)?
            }
            Some(_) => return None,
        };
        Some(Network {
            addr: mask(addr, len),
            len,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        bits_of(ip) == bits_of(self.addr) && mask(ip, self.len) == self.addr
    }
}

impl ClientIp {
    /// The connection's peer address, no header read: a server that clients reach
    /// directly. IPv6 by `/64`, IPv4 by address.
    pub fn peer() -> ClientIp {
        ClientIp {
            trust: Trust::Nobody,
            header: Header::XForwardedFor,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            warned: Arc::default(),
        }
    }

    /// A builder: trusted proxies (by count or by address), the header they write,
    /// and the prefixes clients are keyed by.
    pub fn builder() -> ClientIpBuilder {
        ClientIpBuilder {
            count: None,
            networks: Vec::new(),
            error: None,
            header: Header::XForwardedFor,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }

    /// The client's address, before the prefix is applied.
    fn client(&self, request: &RequestRef<'_>) -> Result<IpAddr, KeyError> {
        let peer = peer_of(request).ok_or_else(missing_peer)?;
        let client = match &self.trust {
            Trust::Nobody => peer,
            Trust::Count(n) => {
                let mut hops = Hops::new(request.headers(), self.header);
                let mut client = peer;
                for _ in 0..*n {
                    match hops.next() {
                        Some(Some(ip)) => client = ip,
                        // Malformed, or fewer hops than proxies: the peer.
                        Some(None) | None => return Ok(peer),
                    }
                }
                client
            }
            Trust::Networks(networks) => {
                let trusted = |ip: IpAddr| networks.iter().any(|n| n.contains(ip));
                if !trusted(peer) {
                    return Ok(peer);
                }
                let mut client = peer;
                for hop in Hops::new(request.headers(), self.header) {
                    match hop {
                        Some(ip) if trusted(ip) => client = ip,
                        Some(ip) => return Ok(ip),
                        None => return Ok(peer),
                    }
                }
                // Every hop is a trusted proxy: the first one sent the request.
                client
            }
        };
        Ok(client)
    }
}

impl KeyExtractor for ClientIp {
    /// The key, or `unknown-peer` (logged at `ERROR` the first time) for a request
    /// without a peer address, in a layer that cannot refuse a request. A
    /// [`RateLimitLayer`](crate::RateLimitLayer) asks [`try_key`](Self::try_key) instead.
    fn key(&self, request: &RequestRef<'_>) -> Key {
        self.try_key(request).unwrap_or_else(|err| {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %err, "key: keying such requests as `unknown-peer`");
            }
            Key::from("unknown-peer")
        })
    }

    fn try_key(&self, request: &RequestRef<'_>) -> Result<Key, KeyError> {
        let ip = self.client(request)?;
        let (bits, prefix) = match ip {
            IpAddr::V4(_) => (32, self.ipv4_prefix),
            IpAddr::V6(_) => (128, self.ipv6_prefix),
        };
        Ok(Key::from(if prefix == bits {
            ip.to_string()
        } else {
            format!("{}/{prefix}", mask(ip, prefix))
        }))
    }
}

/// Builds a [`ClientIp`]; see there for how the chain is read.
///
/// ```
/// use ratewise::key::ClientIp;
///
/// // One proxy in front (a load balancer), by count: the header's last entry.
/// let one_proxy = ClientIp::builder().trusted_proxy_count(1).build()?;
/// // Proxies by address, RFC 7239 `Forwarded`, IPv6 clients keyed by their /56.
/// let by_address = ClientIp::builder()
///     .trusted_proxy("10.0.0.0/8")
///     .trusted_proxy("fd00::/8")
///     .forwarded()
///     .ipv6_prefix(56)
///     .build()?;
///
/// let err = ClientIp::builder().trusted_proxy("10.0.0.0/33").build().unwrap_err();
/// assert_eq!(err.field(), "trusted_proxy");
/// # let _ = (one_proxy, by_address);
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIpBuilder {
    count: Option<u32>,
    networks: Vec<Network>,
    /// The first `trusted_proxy` that did not parse.
    error: Option<String>,
    header: Header,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl ClientIpBuilder {
    /// The last `n` hops are trusted proxies, the peer first: the client is the
    /// address `n` hops left of the peer (with one proxy, the header's last entry).
    /// For a server only the proxies can reach; otherwise prefer
    /// [`trusted_proxy`](Self::trusted_proxy), which knows a peer that is not one.
    pub fn trusted_proxy_count(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    /// A trusted proxy: an address (`"10.0.0.1"`) or a CIDR network (`"10.0.0.0/8"`,
    /// `"fd00::/8"`). Call once per proxy or network.
    pub fn trusted_proxy(mut self, network: &str) -> Self {
        match Network::parse(network) {
            Some(n) => self.networks.push(n),
            None => {
                self.error.get_or_insert_with(|| network.to_owned());
            }
        }
        self
    }

    /// Read RFC 7239 `Forwarded` (`for=` of each element) instead of
    /// `X-Forwarded-For`.
    pub fn forwarded(mut self) -> Self {
        self.header = Header::Forwarded;
        self
    }

    /// The prefix IPv6 clients are keyed by (default 64; 128 keys each address).
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// The prefix IPv4 clients are keyed by (default 32, each address).
    pub fn ipv4_prefix(mut self, prefix: u8) -> Self {
        self.ipv4_prefix = prefix;
        self
    }

    /// The extractor. Errors name the field: `trusted_proxy` for an address or network
    /// that does not parse, `trusted_proxy_count` for zero or when combined with
    /// `trusted_proxy`, `ipv6_prefix` / `ipv4_prefix` out of `1..=128` / `1..=32`.
    pub fn build(self) -> Result<ClientIp, ConfigError> {
        let err = |field, reason: String| ConfigError::new(LayerKind::RateLimit, field, reason);
        if let Some(bad) = self.error {
            return Err(err(
                "trusted_proxy",
                format!("must be an IP address or a CIDR network such as 10.0.0.0/8 (got {bad:?})"),
            ));
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err(err(
                "ipv6_prefix",
                format!("must be between 1 and 128 (got {})", self.ipv6_prefix),
            ));
        }
        if !(1..=32).contains(&self.ipv4_prefix) {
            return Err(err(
                "ipv4_prefix",
                format!("must be between 1 and 32 (got {})", self.ipv4_prefix),
            ));
        }
        let trust =
            match (self.count, self.networks.is_empty()) {
                (Some(_), false) => return Err(err(
                    "trusted_proxy_count",
                    "cannot be combined with trusted_proxy: trust proxies by count or by address"
                        .into(),
                )),
                (Some(0), true) => {
                    return Err(err(
                        "trusted_proxy_count",
                        "must be at least 1 (with no proxy in front, use ClientIp::peer())".into(),
                    ))
                }
                (Some(n), true) => Trust::Count(n),
                (None, false) => Trust::Networks(self.networks),
                (None, true) => Trust::Nobody,
            };
        Ok(ClientIp {
            trust,
            header: self.header,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            warned: Arc::default(),
        })
    }
}

/// The peer address the server put in the request's extensions.
fn peer_of(request: &RequestRef<'_>) -> Option<IpAddr> {
    let ext = request.extensions();
    let peer = ext.get::<SocketAddr>().map(SocketAddr::ip);
    #[cfg(feature = "axum")]
    let peer = peer.or_else(|| {
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip())
    });
    peer.map(canonical)
}

fn missing_peer() -> KeyError {
    KeyError::new(
        "no peer address in the request's extensions: serve the axum app with \
         `into_make_service_with_connect_info::<SocketAddr>()` (with ratewise's `axum` \
         feature), or insert the connection's `SocketAddr` into each request's extensions",
    )
}

/// The hops a header lists, from the right: `Some(ip)`, or `None` for an entry that is
/// not an address (malformed, `unknown`, an obfuscated node).
struct Hops<'a> {
    lines: std::iter::Rev<http::header::ValueIter<'a, http::HeaderValue>>,
    header: Header,
    /// The current line's entries not read yet, left to right.
    pending: Vec<&'a str>,
}

impl<'a> Hops<'a> {
    fn new(headers: &'a HeaderMap, header: Header) -> Self {
        let name = match header {
            Header::XForwardedFor => X_FORWARDED_FOR,
            Header::Forwarded => FORWARDED,
        };
        Hops {
            lines: headers.get_all(name).iter().rev(),
            header,
            pending: Vec::new(),
        }
    }
}

impl Iterator for Hops<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.pending.pop() {
                return Some(match self.header {
                    Header::XForwardedFor => parse_node(entry),
                    Header::Forwarded => forwarded_for(entry).and_then(parse_node),
                });
            }
            let line = self.lines.next()?;
            let Ok(line) = line.to_str() else {
                // Not text: one malformed entry.
                return Some(None);
            };
            self.pending = split_unquoted(line, ',').collect();
        }
    }
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    split_unquoted(element, ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value)
    })
}

/// `text` split at each `sep` outside a quoted string.
fn split_unquoted(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// One node: `192.0.2.1`, `2001:db8::1`, with or without a port (`192.0.2.1:80`,
/// `[2001:db8::1]:80`), optionally quoted (`Forwarded`).
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    let ip = if let Some(rest) = node.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = node.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?)
    };
    Some(canonical(ip))
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn bits_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with every bit after the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn req(peer: Option<&str>, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let mut req = b.body(()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(peer.parse::<SocketAddr>().unwrap());
        }
        req
    }

    fn key(ip: &ClientIp, peer: &str, headers: &[(&str, &str)]) -> String {
        ip.try_key(&RequestRef::from(&req(Some(peer), headers)))
            .unwrap()
            .as_str()
            .to_owned()
    }

    #[test]
    fn the_peer_is_the_client_when_no_proxy_is_trusted() {
        let ip = ClientIp::peer();
        let spoof = [("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")];
        assert_eq!(key(&ip, "198.51.100.7:4000", &spoof), "198.51.100.7");
        assert_eq!(
            key(&ip, "[2001:db8:1:2:3:4:5:6]:4000", &spoof),
            "2001:db8:1:2::/64"
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(key(&ip, "[::ffff:192.0.2.9]:4000", &[]), "192.0.2.9");
    }

    #[test]
    fn prefixes_key_networks() {
        let ip = ClientIp::builder()
            .ipv4_prefix(24)
            .ipv6_prefix(48)
            .build()
            .unwrap();
        assert_eq!(key(&ip, "198.51.100.7:1", &[]), "198.51.100.0/24");
        assert_eq!(key(&ip, "[2001:db8:1:2::1]:1", &[]), "2001:db8:1::/48");
        let full = ClientIp::builder().ipv6_prefix(128).build().unwrap();
        assert_eq!(key(&full, "[2001:db8::7]:1", &[]), "2001:db8::7");
        assert_eq!(key(&full, "[::ffff:10.0.0.1]:1", &[]), "10.0.0.1");
    }

    #[test]
    fn a_count_takes_the_entry_that_many_hops_left_of_the_peer() {
        let one = ClientIp::builder().trusted_proxy_count(1).build().unwrap();
        let two = ClientIp::builder().trusted_proxy_count(2).build().unwrap();
        let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")];
        assert_eq!(key(&one, "10.0.0.1:1", &xff), "10.0.0.2");
        assert_eq!(key(&two, "10.0.0.1:1", &xff), "203.0.113.7");
        // Split over two header lines, the same list.
        let lines = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        ];
        assert_eq!(key(&two, "10.0.0.1:1", &lines), "203.0.113.7");
        // Fewer hops than proxies, or a malformed hop: the peer.
        assert_eq!(
            key(&two, "10.0.0.1:1", &[("x-forwarded-for", "10.0.0.2")]),
            "10.0.0.1"
        );
        assert_eq!(key(&one, "10.0.0.1:1", &[]), "10.0.0.1");
        assert_eq!(
            key(
                &one,
                "10.0.0.1:1",
                &[("x-forwarded-for", "1.2.3.4, nonsense")]
            ),
            "10.0.0.1"
        );
    }

    #[test]
    fn trusted_networks_are_skipped_from_the_right() {
        let ip = ClientIp::builder()
            .trusted_proxy("10.0.0.0/8")
            .trusted_proxy("2001:db8:ffff::1")
            .build()
            .unwrap();
        let xff = |v| [("x-forwarded-for", v)];
        // Two trusted proxies, then the client; what the client wrote is left of it.
        assert_eq!(
            key(&ip, "10.0.0.1:1", &xff("6.6.6.6, 203.0.113.7, 10.9.9.9")),
            "203.0.113.7"
        );
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            key(&ip, "198.51.100.7:1", &xff("10.0.0.5, 6.6.6.6")),
            "198.51.100.7"
        );
        // An IPv6 proxy, ports and brackets.
        assert_eq!(
            key(&ip, "[2001:db8:ffff::1]:1", &xff("[2001:db8:7:7::9]:4711")),
            "2001:db8:7:7::/64"
        );
        assert_eq!(
            key(&ip, "10.0.0.1:1", &xff("203.0.113.7:8080")),
            "203.0.113.7"
        );
        // Every hop trusted: the first.
        assert_eq!(
            key(&ip, "10.0.0.1:1", &xff("10.0.0.3, 10.0.0.2")),
            "10.0.0.3"
        );
        // Malformed entries fall back to the peer, and never panic.
        for bad in [
            "",
            "garbage",
            "1.2.3.4:99999999",
            "[::1",
            "[::1]x",
            "1.2.3.4/8",
            "[]:1",
            ",,,",
        ] {
            assert_eq!(key(&ip, "10.0.0.1:1", &xff(bad)), "10.0.0.1", "{bad:?}");
        }
    }

    #[test]
    fn forwarded_reads_for_of_each_element() {
        let ip = ClientIp::builder()
            .trusted_proxy("10.0.0.0/8")
            .forwarded()
            .build()
            .unwrap();
        let fwd = |v| [("forwarded", v), ("x-forwarded-for", "6.6.6.6")];
        assert_eq!(
            key(
                &ip,
                "10.0.0.1:1",
                &fwd("for=6.6.6.6, for=192.0.2.60;proto=http;by=203.0.113.43")
            ),
            "192.0.2.60"
        );
        assert_eq!(
            key(
                &ip,
                "10.0.0.1:1",
                &fwd(r#"For="[2001:db8:cafe::17]:4711", for=10.0.0.2"#)
            ),
            "2001:db8:cafe::/64"
        );
        // A quoted comma does not split an element; a quoted `for` is unquoted.
        assert_eq!(
            key(&ip, "10.0.0.1:1", &fwd(r#"for=192.0.2.1;ext="a,b""#)),
            "192.0.2.1"
        );
        // `unknown`, obfuscated nodes and elements without `for`: the peer.
        for bad in ["for=unknown", "for=_hidden", "proto=https", "for=\"", "for"] {
            assert_eq!(key(&ip, "10.0.0.1:1", &fwd(bad)), "10.0.0.1", "{bad:?}");
        }
        // `X-Forwarded-For` is not read: only the `Forwarded` the proxy writes.
        assert_eq!(
            key(&ip, "10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6")]),
            "10.0.0.1"
        );
    }

    #[test]
    fn a_missing_peer_is_an_error_not_a_shared_bucket() {
        let ip = ClientIp::builder().trusted_proxy_count(1).build().unwrap();
        let r = req(None, &[("x-forwarded-for", "203.0.113.7")]);
        let err = ip.try_key(&RequestRef::from(&r)).unwrap_err();
        assert!(
            err.reason().contains("into_make_service_with_connect_info"),
            "{err}"
        );
        // A layer that cannot refuse gets a key that says so.
        assert_eq!(ip.key_of(&r), Key::from("unknown-peer"));
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let field = |b: ClientIpBuilder| b.build().unwrap_err().field();
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "host",
            "",
        ] {
            assert_eq!(
                field(ClientIp::builder().trusted_proxy(bad)),
                "trusted_proxy",
                "{bad:?}"
            );
        }
        let both = ClientIp::builder()
            .trusted_proxy_count(1)
            .trusted_proxy("10.0.0.1");
        assert_eq!(field(both), "trusted_proxy_count");
        assert_eq!(
            field(ClientIp::builder().trusted_proxy_count(0)),
            "trusted_proxy_count"
        );
        assert_eq!(field(ClientIp::builder().ipv6_prefix(0)), "ipv6_prefix");
        assert_eq!(field(ClientIp::builder().ipv6_prefix(129)), "ipv6_prefix");
        assert_eq!(field(ClientIp::builder().ipv4_prefix(33)), "ipv4_prefix");
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Network::parse("10.1.2.3/8").unwrap();
        assert_eq!(n, Network::parse("10.0.0.0/8").unwrap());
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a01:203".parse().unwrap()));
        let mapped = Network::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, n);
        assert!(Network::parse("::ffff:10.0.0.0/95").is_none());
        let v6 = Network::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}
