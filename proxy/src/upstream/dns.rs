//! Resolving upstream server names, at load and again while they serve.
//!
//! With no `dns.nameservers`, names go to the system's resolver
//! (`getaddrinfo`, as `nsswitch.conf` says: usually `/etc/hosts`, then DNS).
//! With nameservers, a small stub client asks them directly over UDP, as
//! nginx's `resolver` does; an operator can point Cascade at the PoP's own
//! resolver without touching the host's. Either way a name stands for its
//! IPv4 addresses when it has any, else its IPv6 ones (Envoy's
//! `V4_PREFERRED`): a dual-stack origin seen from an edge without IPv6
//! routes must not fail every other request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::UpstreamGroup;
use crate::config::ServerNames;

/// How long one nameserver has to answer one question.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Resolve `group`'s server names every `every` while the group serves
/// (a thread per group, as health checks have), and serve the addresses
/// they resolve to from then on. A name that does not resolve keeps the
/// addresses it last had, and the other names of the group still follow
/// their answers: a resolver that is down takes no origin out of service
/// (as Envoy's `STRICT_DNS` keeps its hosts).
///
/// An answer whose records live shorter than `every` (their TTL, from
/// `dns.nameservers`) is asked again when it expires, at most every
/// [`MIN_REFRESH`], as nginx's `resolver` keeps answers for their TTL: a
/// name that fails over by DNS is followed at its own pace. The first round
/// runs at once, to learn the TTLs of the answers the config was loaded with.
pub fn spawn_refresher(group: Weak<UpstreamGroup>, every: Duration) {
    let spawned = std::thread::Builder::new().name("cascade-dns".into()).spawn(move || {
        let Some(mut last) = group.upgrade().and_then(|g| g.config.names.clone()) else { return };
        let mut wait = Duration::ZERO;
        // Each name's last TTL: one that fails to resolve is asked again at
        // the pace of its last answer (a failover is when a lookup fails).
        let mut ttls: Vec<Option<Duration>> = vec![None; last.names.len()];
        loop {
            std::thread::sleep(wait);
            let Some(group) = group.upgrade().filter(|g| !g.is_retired()) else { return };
            for (name, last_ttl) in last.names.iter_mut().zip(&mut ttls) {
                match lookup(&name.host, name.port, &last.dns.nameservers) {
                    Ok((addrs, ttl)) => (name.addrs, *last_ttl) = (addrs, ttl),
                    Err(e) => log::warn!("upstream {}: keeping the addresses {:?} had: {e}", group.name(), name.host),
                }
            }
            wait = next_refresh(every, ttls.iter().flatten().min().copied());
            group.record_answers(&last.names);
            let addrs = last.servers();
            let serving = group.servers();
            let same = addrs.len() == serving.len() && serving.iter().all(|s| addrs.contains(&s.addr));
            if !same {
                let were: Vec<SocketAddr> = serving.iter().map(|s| s.addr).collect();
                log::info!("upstream {}: servers are now {addrs:?} (were {were:?})", group.name());
                group.replace_servers(&addrs);
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a DNS refresher: {e}");
    }
}

impl ServerNames {
    /// The servers the addresses and the names' last answers stand for.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let mut servers = self.fixed.clone();
        for addr in self.names.iter().flat_map(|name| &name.addrs) {
            if !servers.contains(addr) {
                servers.push(*addr);
            }
        }
        servers
    }
}

/// The soonest a name is asked again, however short its answer's TTL
/// (Envoy's `dns_min_refresh_rate`): a TTL of 0, as Consul gives, would
/// otherwise mean a question a second per name.
const MIN_REFRESH: Duration = Duration::from_secs(5);

/// How long until the names are asked again: `every`, or sooner when an
/// answer's TTL runs out first (never sooner than [`MIN_REFRESH`]).
fn next_refresh(every: Duration, shortest_ttl: Option<Duration>) -> Duration {
    shortest_ttl.map_or(every, |ttl| every.min(ttl.max(MIN_REFRESH)))
}

/// The addresses `host` stands for (its IPv4 ones if it has any, else its
/// IPv6 ones), each with `port`, in the order given and without repeats;
/// an error says why there is none.
pub fn resolve(host: &str, port: u16, nameservers: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    lookup(host, port, nameservers).map(|(addrs, _)| addrs)
}

/// [`resolve`], with how long the answer may be kept (the least TTL of its
/// records) when `nameservers` gave it; the system's resolver does not say.
fn lookup(host: &str, port: u16, nameservers: &[SocketAddr]) -> Result<(Vec<SocketAddr>, Option<Duration>), String> {
    let mut ttl = None;
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) if nameservers.is_empty() => {
            let found = (host, port).to_socket_addrs().map_err(|e| format!("{host:?} does not resolve: {e}"))?;
            let found: Vec<IpAddr> = found.map(|addr| addr.ip()).collect();
            match found.iter().any(IpAddr::is_ipv4) {
                true => found.into_iter().filter(IpAddr::is_ipv4).collect(),
                false => found,
            }
        }
        Err(_) => {
            let answer = ask(host, nameservers)?;
            ttl = answer.ttl;
            answer.ips
        }
    };
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{host:?} has no address"));
    }
    Ok((addrs, ttl))
}

/// The addresses of one answer, and how long it may be kept: the least
/// TTL of the records that led to them (CNAMEs included).
#[derive(Debug, Default, PartialEq)]
struct Answer {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
}

/// The A records of `host`, or its AAAA records if it has no A record,
/// from the first nameserver that answers. A question that fails (no
/// answer, SERVFAIL, a truncated answer not whole over TCP either) sends it
/// to the next nameserver: half an answer could leave half a name's servers.
fn ask(host: &str, nameservers: &[SocketAddr]) -> Result<Answer, String> {
    let name = encode_name(host)?;
    let mut last_error = String::new();
    for &nameserver in nameservers {
        let answers = query(nameserver, &name, TYPE_A).and_then(|v4| match v4.ips.is_empty() {
            true => query(nameserver, &name, TYPE_AAAA),
            false => Ok(v4),
        });
        match answers {
            Ok(answer) if answer.ips.is_empty() => {
                return Err(format!("{host:?} has no A or AAAA record (from {nameserver})"));
            }
            Ok(answer) => return Ok(answer),
            Err(e) => last_error = format!("{host:?}: nameserver {nameserver}: {e}"),
        }
    }
    Err(last_error)
}

/// `host` in DNS wire form: length-prefixed labels, then the root.
fn encode_name(host: &str) -> Result<Vec<u8>, String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut name = Vec::with_capacity(host.len() + 2);
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{host:?} is not a host name"));
        }
        name.push(label.len() as u8);
        name.extend_from_slice(label.as_bytes());
    }
    name.push(0);
    if name.len() > 255 {
        return Err(format!("{host:?} is longer than a DNS name may be"));
    }
    Ok(name)
}

/// The UDP payload size this client offers (EDNS0): the size DNS Flag Day
/// 2020 settled on, which no path fragments. Without it an answer is cut
/// at 512 bytes, about 29 addresses.
const UDP_PAYLOAD: u16 = 1232;

/// Ask `nameserver` for the `qtype` records of `name` (wire form): over
/// UDP, and over TCP when the answer does not fit a datagram (a large
/// pool), as a resolver must (RFC 7766).
fn query(nameserver: SocketAddr, name: &[u8], qtype: u16) -> Result<Answer, String> {
    let id = query_id();
    let mut message = question(id, name, qtype, true);
    let mut answer = over_udp(nameserver, &message, id, name, qtype);
    // A server that cannot read an OPT record says FORMERR: ask it again
    // without one (RFC 6891 §7).
    if answer == Err(AnswerError::FormatError) {
        message = question(id, name, qtype, false);
        answer = over_udp(nameserver, &message, id, name, qtype);
    }
    match answer {
        Err(AnswerError::Truncated) => {
            over_tcp(nameserver, &message, id, name, qtype).map_err(|e| format!("over TCP: {}", e.describe()))
        }
        answer => answer.map_err(|e| e.describe()),
    }
}

/// Query `id` for `name`'s `qtype` records, recursion desired; with
/// `edns`, offering [`UDP_PAYLOAD`] bytes of answer.
fn question(id: u16, name: &[u8], qtype: u16, edns: bool) -> Vec<u8> {
    let mut message = Vec::with_capacity(12 + name.len() + 4 + 11);
    // Header: the id, recursion desired, one question, and with EDNS one
    // additional record (the OPT below).
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    message.extend_from_slice(name);
    message.extend_from_slice(&qtype.to_be_bytes());
    message.extend_from_slice(&CLASS_IN.to_be_bytes());
    if !edns {
        return message;
    }
    // OPT: the root name, type 41, the payload size as its class, no
    // extended flags, no options.
    message.extend_from_slice(&[0, 0, 41]);
    message.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    message.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    message
}

fn over_udp(nameserver: SocketAddr, message: &[u8], id: u16, name: &[u8], qtype: u16) -> Result<Answer, AnswerError> {
    let failed = |e: std::io::Error| AnswerError::Failed(e.to_string());
    let local: SocketAddr = match nameserver {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(failed)?;
    // Connected: the kernel drops datagrams from anyone else.
    socket.connect(nameserver).map_err(failed)?;
    socket.send(message).map_err(failed)?;
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let mut buf = [0u8; UDP_PAYLOAD as usize];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AnswerError::NoAnswer);
        }
        socket.set_read_timeout(Some(left)).map_err(failed)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(AnswerError::NoAnswer);
            }
            Err(e) => return Err(failed(e)),
        };
        // An answer to another question (a late one to an earlier query
        // from this port) is not this one's.
        match parse_answer(&buf[..n], id, name, qtype) {
            Err(AnswerError::NotOurs) => continue,
            answer => return answer,
        }
    }
}

/// The same question over TCP: each message prefixed by its length.
fn over_tcp(nameserver: SocketAddr, message: &[u8], id: u16, name: &[u8], qtype: u16) -> Result<Answer, AnswerError> {
    use std::io::{Read, Write};
    let failed = |e: std::io::Error| AnswerError::Failed(e.to_string());
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let left = || match deadline.saturating_duration_since(Instant::now()) {
        left if left.is_zero() => Err(AnswerError::NoAnswer),
        left => Ok(Some(left)),
    };
    let mut stream = std::net::TcpStream::connect_timeout(&nameserver, QUERY_TIMEOUT).map_err(failed)?;
    stream.set_write_timeout(left()?).map_err(failed)?;
    let length = u16::try_from(message.len()).expect("a question is shorter than 64 KiB");
    stream.write_all(&[&length.to_be_bytes()[..], message].concat()).map_err(failed)?;
    stream.set_read_timeout(left()?).map_err(failed)?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).map_err(failed)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.set_read_timeout(left()?).map_err(failed)?;
    stream.read_exact(&mut answer).map_err(failed)?;
    parse_answer(&answer, id, name, qtype)
}

/// A query id no one on the path can predict (it and the source port are
/// all that stand against a forged answer). `RandomState`'s SipHash keys
/// are random per thread and step at every `new`, so each hash is a fresh
/// secret-keyed value whatever it hashes.
fn query_id() -> u16 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8) as u16
}

#[derive(Debug, PartialEq)]
enum AnswerError {
    /// Not an answer to the question asked: wait for another.
    NotOurs,
    /// None came within [`QUERY_TIMEOUT`].
    NoAnswer,
    /// Cut to fit a datagram: the records it holds may be some of the
    /// name's only; ask again over TCP.
    Truncated,
    /// FORMERR: the server could not read the question.
    FormatError,
    Failed(String),
}

impl AnswerError {
    /// What went wrong, for the operator.
    fn describe(self) -> String {
        match self {
            Self::NotOurs => "an answer to another question".into(),
            Self::NoAnswer => format!("no answer in {QUERY_TIMEOUT:?}"),
            Self::Truncated => "the answer was truncated".into(),
            Self::FormatError => "the nameserver could not read the question (FORMERR)".into(),
            Self::Failed(message) => message,
        }
    }
}

/// The addresses in `message`, the answer to query `id` for `name`'s
/// `qtype` records. Every read is bounds-checked: the answer comes from the
/// network.
fn parse_answer(message: &[u8], id: u16, name: &[u8], qtype: u16) -> Result<Answer, AnswerError> {
    let failed = |what: &str| AnswerError::Failed(what.to_string());
    let mut reader = Reader { message, at: 0 };
    let header = reader.take(12).ok_or(AnswerError::NotOurs)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let is_answer = flags & 0x8000 != 0;
    if u16::from_be_bytes([header[0], header[1]]) != id || !is_answer {
        return Err(AnswerError::NotOurs);
    }
    // FORMERR often comes without the question it could not read.
    if flags & 0x000f == 1 {
        return Err(AnswerError::FormatError);
    }
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    // The question must be ours, as written (names compare without case).
    let echoed = reader.take(name.len()).ok_or(AnswerError::NotOurs)?;
    let echoed_type = reader.u16().ok_or(AnswerError::NotOurs)?;
    if questions != 1 || !echoed.eq_ignore_ascii_case(name) || echoed_type != qtype || reader.u16() != Some(CLASS_IN) {
        return Err(AnswerError::NotOurs);
    }
    match flags & 0x000f {
        0 => {}
        // No such name: no addresses, which the caller reports.
        3 => return Ok(Answer::default()),
        2 => return Err(failed("the nameserver failed (SERVFAIL)")),
        5 => return Err(failed("the nameserver refused the query")),
        code => return Err(failed(&format!("the nameserver answered error {code}"))),
    }
    // Cut to fit: its last record may be cut too.
    if flags & 0x0200 != 0 {
        return Err(AnswerError::Truncated);
    }
    let (mut ips, mut ttl) = (Vec::new(), None::<u32>);
    for _ in 0..answers {
        let record = reader.record().ok_or_else(|| failed("a malformed answer"))?;
        if record.class != CLASS_IN {
            continue;
        }
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        // CNAME records lead to the addresses that follow them.
        match (record.rtype, record.data.len()) {
            (TYPE_A, 4) if qtype == TYPE_A => {
                ips.push(IpAddr::from(<[u8; 4]>::try_from(record.data).expect("four bytes")));
            }
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                ips.push(IpAddr::from(<[u8; 16]>::try_from(record.data).expect("sixteen bytes")));
            }
            _ => {}
        }
    }
    let ttl = ttl.filter(|_| !ips.is_empty()).map(|secs| Duration::from_secs(u64::from(secs)));
    Ok(Answer { ips, ttl })
}

struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

struct Record<'a> {
    rtype: u16,
    class: u16,
    /// Seconds the record may be kept.
    ttl: u32,
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.message.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Step over a name: labels, ending at the root or at a pointer
    /// (compression), which is all a name in an answer needs here.
    fn skip_name(&mut self) -> Option<()> {
        loop {
            let length = *self.take(1)?.first()?;
            match length {
                0 => return Some(()),
                l if l & 0xc0 == 0xc0 => return self.take(1).map(drop),
                l if l & 0xc0 == 0 => self.take(usize::from(l)).map(drop)?,
                _ => return None,
            }
        }
    }

    fn record(&mut self) -> Option<Record<'a>> {
        self.skip_name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
        let length = self.u16()?;
        let data = self.take(usize::from(length))?;
        Some(Record { rtype, class, ttl, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to query `id` for `name`'s `qtype` records, with `records`
    /// (each: type, data) under a compressed pointer to the question's name.
    fn answer(id: u16, flags: u16, name: &[u8], qtype: u16, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&(records.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(name);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        for (rtype, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 30]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn an_answer_gives_its_addresses_past_a_cname() {
        let name = encode_name("origin.example").unwrap();
        assert_eq!(name, b"\x06origin\x07example\x00");
        let cname = b"\x03lb1\xc0\x13";
        let message =
            answer(7, 0x8180, &name, TYPE_A, &[(5, cname), (TYPE_A, &[10, 0, 0, 1]), (TYPE_A, &[10, 0, 0, 2])]);
        let parsed = parse_answer(&message, 7, &name, TYPE_A).unwrap();
        assert_eq!(parsed.ips, vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]);
        assert_eq!(parsed.ttl, Some(Duration::from_secs(30)));
        // The first address record (after the 12-byte header, the 20-byte
        // question and the 18-byte CNAME) lives 5 s: the answer does too.
        let mut message = message;
        message[12 + 20 + 18 + 9] = 5;
        assert_eq!(parse_answer(&message, 7, &name, TYPE_A).unwrap().ttl, Some(Duration::from_secs(5)));
        let v6 = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let message = answer(8, 0x8180, &name, TYPE_AAAA, &[(TYPE_AAAA, &v6)]);
        assert_eq!(parse_answer(&message, 8, &name, TYPE_AAAA).unwrap().ips, vec![IpAddr::from(v6)]);
    }

    #[test]
    fn answers_to_other_questions_are_passed_over() {
        let name = encode_name("origin.example").unwrap();
        let message = answer(7, 0x8180, &name, TYPE_A, &[(TYPE_A, &[10, 0, 0, 1])]);
        assert_eq!(parse_answer(&message, 8, &name, TYPE_A), Err(AnswerError::NotOurs), "another id");
        let other = encode_name("other.example").unwrap();
        assert_eq!(parse_answer(&message, 7, &other, TYPE_A), Err(AnswerError::NotOurs), "another name");
        assert_eq!(parse_answer(&message, 7, &name, TYPE_AAAA), Err(AnswerError::NotOurs), "another type");
        let query = answer(7, 0x0100, &name, TYPE_A, &[]);
        assert_eq!(parse_answer(&query, 7, &name, TYPE_A), Err(AnswerError::NotOurs), "a query, not an answer");
        let upper = encode_name("ORIGIN.example").unwrap();
        assert!(parse_answer(&message, 7, &upper, TYPE_A).is_ok(), "names compare without case");
    }

    #[test]
    fn errors_and_hostile_answers_say_what_went_wrong_and_never_panic() {
        let name = encode_name("origin.example").unwrap();
        let servfail = answer(7, 0x8182, &name, TYPE_A, &[]);
        assert!(
            matches!(parse_answer(&servfail, 7, &name, TYPE_A), Err(AnswerError::Failed(m)) if m.contains("SERVFAIL"))
        );
        let nxdomain = answer(7, 0x8183, &name, TYPE_A, &[]);
        assert_eq!(parse_answer(&nxdomain, 7, &name, TYPE_A), Ok(Answer::default()));
        // Truncated: the records it holds may be some of the name's only.
        let truncated = answer(7, 0x8380, &name, TYPE_A, &[(TYPE_A, &[10, 0, 0, 1])]);
        assert_eq!(parse_answer(&truncated, 7, &name, TYPE_A), Err(AnswerError::Truncated));
        // Every prefix of a good answer, and answers claiming more records
        // than they hold: an error, never a panic or a read past the end.
        let good = answer(7, 0x8180, &name, TYPE_A, &[(TYPE_A, &[10, 0, 0, 1])]);
        for end in 0..good.len() {
            assert!(parse_answer(&good[..end], 7, &name, TYPE_A).is_err(), "a cut at {end} passed");
        }
        let mut lying = good.clone();
        lying[7] = 200;
        assert!(parse_answer(&lying, 7, &name, TYPE_A).is_err());
        // A record of the wrong length for its type is no address.
        let odd = answer(7, 0x8180, &name, TYPE_A, &[(TYPE_A, &[10, 0, 0])]);
        assert_eq!(parse_answer(&odd, 7, &name, TYPE_A).map(|a| a.ips), Ok(vec![]));
    }

    /// A nameserver on UDP and TCP at one port, as nameservers are: over
    /// UDP it answers with `addresses` only if the question offers room for
    /// them (EDNS0), else with what fits in 512 bytes, marked truncated;
    /// over TCP (if `on_tcp`) with all of them. With `knows_edns` false it
    /// answers a question with an OPT record FORMERR, as servers from
    /// before EDNS do.
    fn pool_nameserver(addresses: usize, on_tcp: bool) -> SocketAddr {
        any_nameserver(addresses, on_tcp, true)
    }

    fn any_nameserver(addresses: usize, on_tcp: bool, knows_edns: bool) -> SocketAddr {
        let (udp, tcp) = std::iter::repeat_with(|| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let tcp = std::net::TcpListener::bind(udp.local_addr().ok()?).ok()?;
            Some((udp, tcp))
        })
        .flatten()
        .next()
        .unwrap();
        let records: Vec<[u8; 4]> = (0..addresses).map(|i| [10, 0, (i / 250) as u8, (i % 250) as u8 + 1]).collect();
        let reply = move |query: &[u8], room: usize| {
            let (id, question) = (u16::from_be_bytes([query[0], query[1]]), &query[12..]);
            let name_end = question.iter().position(|&b| b == 0).unwrap() + 1;
            let (name, qtype) =
                (&question[..name_end], u16::from_be_bytes([question[name_end], question[name_end + 1]]));
            let fitting = records.len().min((room - 12 - name.len() - 4) / 16);
            let flags = if fitting < records.len() { 0x8380 } else { 0x8180 };
            let records: Vec<(u16, &[u8])> = records[..fitting].iter().map(|ip| (TYPE_A, &ip[..])).collect();
            answer(id, flags, name, qtype, if qtype == TYPE_A { &records } else { &[] })
        };
        let udp_reply = reply.clone();
        let addr = udp.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let query = &buf[..n];
                // The OPT record, last: its class is the room offered.
                let offered = (n >= 11 && query[n - 11..n - 8] == [0, 0, 41])
                    .then(|| usize::from(u16::from_be_bytes([query[n - 8], query[n - 7]])));
                let mut reply = udp_reply(query, offered.unwrap_or(512).max(512));
                if offered.is_some() && !knows_edns {
                    // FORMERR, as such servers often send it: the header
                    // alone, without the question it could not read.
                    reply.truncate(12);
                    reply[2..4].copy_from_slice(&[0x81, 0x81]);
                    reply[4..12].copy_from_slice(&[0; 8]);
                }
                let _ = udp.send_to(&reply, from);
            }
        });
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut stream in tcp.incoming().flatten().filter(|_| on_tcp) {
                let mut length = [0u8; 2];
                let _ = stream.read_exact(&mut length);
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                let _ = stream.read_exact(&mut query);
                let message = reply(&query, 65_535);
                let _ = stream.write_all(&[&(message.len() as u16).to_be_bytes()[..], &message].concat());
            }
        });
        addr
    }

    #[test]
    fn a_large_pool_is_read_whole() {
        // 60 addresses fit in the room EDNS0 offers, not in 512 bytes.
        let nameserver = pool_nameserver(60, false);
        assert_eq!(resolve("pool.example", 80, &[nameserver]).unwrap().len(), 60);
        // 200 fit no datagram: the answer comes over TCP.
        let nameserver = pool_nameserver(200, true);
        let addrs = resolve("pool.example", 80, &[nameserver]).unwrap();
        assert_eq!(addrs.len(), 200);
        assert_eq!(addrs[199], "10.0.0.200:80".parse().unwrap());
        // A server from before EDNS is asked again without it: what fits
        // in 512 bytes comes over UDP, the rest over TCP.
        assert_eq!(resolve("pool.example", 80, &[any_nameserver(20, false, false)]).unwrap().len(), 20);
        assert_eq!(resolve("pool.example", 80, &[any_nameserver(60, true, false)]).unwrap().len(), 60);
        // Not whole over TCP either: an error that says so, not part of the pool.
        let error = resolve("pool.example", 80, &[pool_nameserver(200, false)]).unwrap_err();
        assert!(error.contains("over TCP"), "{error}");
    }

    #[test]
    fn a_short_ttl_brings_the_next_question_forward() {
        let every = Duration::from_secs(30);
        assert_eq!(next_refresh(every, None), every, "the system's resolver gives no TTL");
        assert_eq!(next_refresh(every, Some(Duration::from_secs(5))), Duration::from_secs(5));
        assert_eq!(next_refresh(every, Some(Duration::from_secs(300))), every);
        assert_eq!(next_refresh(every, Some(Duration::ZERO)), MIN_REFRESH, "a TTL of 0 is not asked on every turn");
        assert_eq!(
            next_refresh(Duration::from_secs(1), Some(Duration::ZERO)),
            Duration::from_secs(1),
            "refresh_secs is the most"
        );
    }

    #[test]
    fn names_that_cannot_be_asked_are_refused() {
        assert!(encode_name("a..b").is_err());
        assert!(encode_name(&"x".repeat(64)).is_err());
        assert!(encode_name(&["abc"; 70].join(".")).is_err());
        assert_eq!(encode_name("origin.example.").unwrap(), encode_name("origin.example").unwrap());
    }

    #[test]
    fn an_address_needs_no_resolver_and_repeats_go() {
        let nowhere = ["127.0.0.1:9".parse().unwrap()];
        assert_eq!(resolve("10.0.0.1", 80, &nowhere).unwrap(), vec!["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(resolve("::1", 80, &[]).unwrap(), vec!["[::1]:80".parse().unwrap()]);
    }
}
