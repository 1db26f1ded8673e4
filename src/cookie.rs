//! The cookie codec: finding the session cookie in `Cookie` headers,
//! encoding its value, building `Set-Cookie` lines, and sealing the
//! short-lived flow and reset cookies with the app key. Pure: no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::HeaderMap;
use http::header::COOKIE;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, ErrorKind};
use crate::upstream::{Secret, Session, SessionStorage, SessionToken};

/// Marks a session-cookie value that holds a base64url-encoded token.
const ENCODED_MARK: u8 = b'~';

/// The longest value of one cookie: with its name (at most ~80 bytes) it
/// stays under the 4096 bytes browsers keep per cookie (RFC 6265bis §5.6).
pub(crate) const MAX_VALUE_LEN: usize = 4000;

/// The most chunks a session cookie is split into (`name__0` …
/// `name__3`); the configured ceiling is usually lower.
pub(crate) const MAX_CHUNKS: usize = 4;

/// The default ceiling of a session's cookie value: two chunks. Many
/// servers refuse request headers over 8 KiB (nginx's default), so a larger
/// session would lock its user out; it fails the sign-in instead.
pub(crate) const DEFAULT_CEILING: usize = 2 * MAX_VALUE_LEN;

/// What the request's `Cookie` headers say about the session cookie.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionCookie {
    /// No session cookie.
    Absent,
    /// Exactly one well-formed session.
    Present(Session),
    /// A session cookie that can never be valid (bad encoding, too long,
    /// a gap in its chunks, both forms at once).
    Malformed,
    /// Two different values under our name: never choose by order
    /// (SECURITY.md T-C3).
    Ambiguous,
}

/// Which forms of the session cookie a request carried: bit `i` for the
/// chunk `name__i`, [`Presence::SINGLE`] for the unchunked `name`. The
/// writer removes what it does not overwrite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Presence(u8);

impl Presence {
    const SINGLE: u8 = 0x80;

    pub(crate) fn single() -> Self {
        Self(Self::SINGLE)
    }

    fn has_single(self) -> bool {
        self.0 & Self::SINGLE != 0
    }

    fn has_chunk(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

/// The raw session-cookie value in a request, not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieScan<'h> {
    Absent,
    /// One unchunked value.
    Present(&'h [u8]),
    /// `count` chunks, `name__0` to `name__{count-1}`, in order.
    Chunked {
        parts: [&'h [u8]; MAX_CHUNKS],
        count: usize,
        presence: Presence,
    },
    /// Chunks with a gap, or a lone chunk: never a session.
    Malformed(Presence),
    Ambiguous,
}

impl CookieScan<'_> {
    /// Which forms the request carried.
    pub(crate) fn presence(&self) -> Presence {
        match self {
            Self::Absent | Self::Ambiguous => Presence::default(),
            Self::Present(_) => Presence::single(),
            Self::Chunked { presence, .. } | Self::Malformed(presence) => *presence,
        }
    }
}

/// A chunk pair after the base name: `__{index}={value}`.
fn parse_chunk(after_name: &[u8]) -> Option<(usize, &[u8])> {
    let rest = after_name.strip_prefix(b"__")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits != 1 {
        return None;
    }
    let index = usize::from(rest[0] - b'0');
    let value = rest[1..].trim_ascii_start().strip_prefix(b"=")?;
    Some((index, value.trim_ascii()))
}

/// Past the first pair, a rest of a header longer than this is searched
/// for the name instead of split into pairs: a split costs about 115
/// instructions a pair (a `memchr` for each `;`), the search about 300
/// whatever the length (callgrind, `scripts/warm-path.sh`), so a browser
/// with many cookies (analytics, consent, chat widgets) costs little more
/// than one with three, and one long session cookie costs no search.
const SEARCH_ABOVE: usize = 192;

/// What a scan has seen so far.
#[derive(Default)]
struct Seen<'h> {
    found: Option<&'h [u8]>,
    chunked: bool,
}

impl<'h> Seen<'h> {
    /// Takes what follows our name in a pair: `=value` (true when it
    /// differs from a value seen before: ambiguous), or a chunk's `__i`.
    #[inline]
    fn take(&mut self, after: &'h [u8]) -> bool {
        if let Some(value) = after.trim_ascii_start().strip_prefix(b"=") {
            let value = value.trim_ascii();
            match self.found {
                Some(previous) if previous != value => return true,
                _ => self.found = Some(value),
            }
        } else {
            self.chunked |= after.starts_with(b"__");
        }
        false
    }
}

/// Finds one cookie by name in `Cookie` headers: a pass over the pairs
/// that compares only their first bytes with the name, with no parsing or
/// copying of the other cookies (a third of the instructions of splitting
/// and trimming every pair, see BENCHMARKS.md). Property-tested to pick the
/// same value as the `cookie` crate. Chunks (`name__0`, `name__1`) are
/// looked at only when a pair starts with the name.
#[derive(Debug, Clone)]
pub(crate) struct CookieFinder {
    name: Box<[u8]>,
    finder: memchr::memmem::Finder<'static>,
}

impl CookieFinder {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.as_bytes().into(),
            finder: memchr::memmem::Finder::new(name.as_bytes()).into_owned(),
        }
    }

    /// Scans every `Cookie` header at the byte level. Unrelated cookies may
    /// hold any bytes (SECURITY.md T-C5); several `Cookie` header fields
    /// are tolerated; two different values are ambiguous (T-C3). The name is
    /// matched exactly and case-sensitively.
    pub(crate) fn scan<'h>(&self, headers: &'h HeaderMap) -> CookieScan<'h> {
        let name = &*self.name;
        let mut seen = Seen::default();
        for header in headers.get_all(COOKIE) {
            let mut rest = header.as_bytes();
            loop {
                let end = memchr::memchr(b';', rest);
                let pair = rest[..end.unwrap_or(rest.len())].trim_ascii_start();
                // The first byte first: most pairs are other cookies, and
                // this spares them a `memcmp` call.
                if pair.first() == name.first()
                    && let Some(after) = pair.strip_prefix(name)
                    && seen.take(after)
                {
                    return CookieScan::Ambiguous;
                }
                let Some(end) = end else { break };
                rest = &rest[end + 1..];
                if rest.len() > SEARCH_ABOVE {
                    if self.scan_occurrences(rest, &mut seen) {
                        return CookieScan::Ambiguous;
                    }
                    break;
                }
            }
        }
        if seen.chunked {
            return self.scan_chunks(headers, seen.found);
        }
        seen.found.map_or(CookieScan::Absent, CookieScan::Present)
    }

    /// The rest of a header with many cookies, from a pair start: only
    /// where the name occurs, found in one SIMD pass, instead of a search
    /// for every `;`.
    #[inline(never)]
    fn scan_occurrences<'h>(&self, bytes: &'h [u8], seen: &mut Seen<'h>) -> bool {
        for at in self.finder.find_iter(bytes) {
            // A pair starts at the header's start or after a `;`, with only
            // whitespace between; elsewhere the name is inside another
            // cookie's name or value.
            let lead = bytes[..at].trim_ascii_end();
            if !(lead.is_empty() || lead.ends_with(b";")) {
                continue;
            }
            let after = &bytes[at + self.name.len()..];
            let after = &after[..memchr::memchr(b';', after).unwrap_or(after.len())];
            if seen.take(after) {
                return true;
            }
        }
        false
    }

    /// The cold half of [`scan`](Self::scan), when a pair looked like a
    /// chunk: a second pass that collects the chunks.
    #[cold]
    #[inline(never)]
    fn scan_chunks<'h>(&self, headers: &'h HeaderMap, single: Option<&'h [u8]>) -> CookieScan<'h> {
        let mut chunks: [Option<&[u8]>; MAX_CHUNKS] = [None; MAX_CHUNKS];
        let mut presence = 0u8;
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let Some(after) = pair.trim_ascii_start().strip_prefix(&*self.name) else {
                    continue;
                };
                // An index past the most we write is not ours (like a
                // longer name): ignored, so a planted `name__9` can neither
                // hide nor delete the session.
                if let Some((index, value)) = parse_chunk(after).filter(|(i, _)| *i < MAX_CHUNKS) {
                    presence |= 1 << index;
                    match chunks[index] {
                        Some(previous) if previous != value => return CookieScan::Ambiguous,
                        _ => chunks[index] = Some(value),
                    }
                }
            }
        }
        if presence == 0 {
            // Only longer names (`name__x`, `name__9`): not ours.
            return single.map_or(CookieScan::Absent, CookieScan::Present);
        }
        assemble_chunks(single, &chunks, Presence(presence))
    }
}

/// The cold half of [`CookieFinder::scan`]: chunks were seen.
fn assemble_chunks<'h>(
    single: Option<&'h [u8]>,
    chunks: &[Option<&'h [u8]>; MAX_CHUNKS],
    presence: Presence,
) -> CookieScan<'h> {
    if single.is_some() {
        // Both forms: one of them was planted (or a removal was lost).
        // Never choose, never delete (SECURITY.md T-C3); the next sign-in
        // writes one form and removes the other.
        return CookieScan::Ambiguous;
    }
    let count = chunks.iter().take_while(|c| c.is_some()).count();
    let gap = chunks[count..].iter().any(Option::is_some);
    if gap || count < 2 {
        return CookieScan::Malformed(presence);
    }
    let mut parts: [&[u8]; MAX_CHUNKS] = [&[]; MAX_CHUNKS];
    for (part, chunk) in parts.iter_mut().zip(chunks) {
        *part = chunk.unwrap_or_default();
    }
    CookieScan::Chunked {
        parts,
        count,
        presence,
    }
}

impl CookieFinder {
    /// The raw value of this cookie (the flow and reset cookies); `None`
    /// when absent, ambiguous, chunked or not UTF-8.
    pub(crate) fn raw<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match self.scan(headers) {
            CookieScan::Present(value) => std::str::from_utf8(value).ok(),
            _ => None,
        }
    }
}

/// A session cookie's whole value: the unchunked value, or the chunks
/// joined in a stack buffer (no heap allocation). This is the cache key.
pub(crate) struct WireValue<'h> {
    single: &'h [u8],
    joined: Option<([u8; MAX_CHUNKS * MAX_VALUE_LEN], usize)>,
}

impl<'h> WireValue<'h> {
    /// The wire value of a scan, `None` for an absent, ambiguous or
    /// malformed cookie or chunks over the hard maximum.
    pub(crate) fn of(scan: &CookieScan<'h>) -> Option<Self> {
        match scan {
            // Longer than one cookie we could have set: never valid.
            CookieScan::Present(value) if value.len() > MAX_VALUE_LEN => None,
            CookieScan::Present(value) => Some(Self {
                single: value,
                joined: None,
            }),
            CookieScan::Chunked { parts, count, .. } => {
                let mut buffer = [0u8; MAX_CHUNKS * MAX_VALUE_LEN];
                let mut len = 0;
                for part in &parts[..*count] {
                    let end = len + part.len();
                    buffer.get_mut(len..end)?.copy_from_slice(part);
                    len = end;
                }
                Some(Self {
                    single: &[],
                    joined: Some((buffer, len)),
                })
            }
            _ => None,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.joined {
            Some((buffer, len)) => &buffer[..*len],
            None => self.single,
        }
    }
}

fn is_plain_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Decodes a plain session-cookie value: plain tokens as they are, others
/// from base64url after the `~` mark.
fn decode_token(value: &[u8], max_len: usize) -> Option<SessionToken> {
    if value.is_empty() || value.len() > max_len {
        return None;
    }
    if value[0] == ENCODED_MARK {
        let bytes = URL_SAFE_NO_PAD.decode(&value[1..]).ok()?;
        return SessionToken::new(String::from_utf8(bytes).ok()?);
    }
    if !value.iter().all(|&b| is_plain_token_byte(b)) {
        return None;
    }
    std::str::from_utf8(value).ok().and_then(SessionToken::new)
}

/// Encodes a token as a cookie-octet-only value (SECURITY.md T-C7).
pub(crate) fn encode_token(token: &SessionToken) -> String {
    let raw = token.expose();
    if raw.bytes().all(is_plain_token_byte) {
        raw.to_owned()
    } else {
        let mut value = String::with_capacity(1 + raw.len().div_ceil(3) * 4);
        value.push(ENCODED_MARK as char);
        URL_SAFE_NO_PAD.encode_string(raw, &mut value);
        value
    }
}

/// A [`Session`] as sealed in the cookie: short field names, because the
/// cookie is sent with every request.
#[derive(Serialize, serde::Deserialize)]
struct SealedSession<T> {
    t: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<u64>,
}

/// The session cookie's codec: [`SessionStorage::Plain`] keeps the token
/// (today's format, byte for byte), [`SessionStorage::Sealed`] the whole
/// [`Session`] under AES-256-GCM with the cookie name as associated data;
/// a value over [`MAX_VALUE_LEN`] is split into chunks `name__0`,
/// `name__1`, …, and one over the ceiling is refused (SECURITY.md T-C4).
#[derive(Debug, Clone)]
pub(crate) struct SessionCodec {
    pub(crate) storage: SessionStorage,
    pub(crate) name: String,
    keys: Keys,
    ceiling: usize,
    attributes: CookieAttributes,
    max_age: Duration,
}

impl SessionCodec {
    pub(crate) fn new(
        storage: SessionStorage,
        name: String,
        keys: Keys,
        ceiling: usize,
        attributes: CookieAttributes,
        max_age: Duration,
    ) -> Self {
        Self {
            storage,
            name,
            keys,
            ceiling: ceiling.clamp(MAX_VALUE_LEN, MAX_CHUNKS * MAX_VALUE_LEN),
            attributes,
            max_age,
        }
    }

    /// How long the cookie of `session` lives: the configured session max
    /// age, capped by the token's expiry unless a refresh token can renew
    /// it.
    pub(crate) fn max_age(&self, session: &Session) -> Duration {
        let expiry = session
            .expires_at
            .filter(|_| session.refresh_token.is_none())
            .map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
        expiry.map_or(self.max_age, |left| left.min(self.max_age))
    }

    /// The cookie value of a session (the cache key), or
    /// [`ErrorKind::SessionTooLarge`] over the ceiling.
    pub(crate) fn encode(&self, session: &Session) -> Result<String, Error> {
        let value = match self.storage {
            SessionStorage::Plain => encode_token(&session.token),
            SessionStorage::Sealed => {
                let sealed = SealedSession {
                    t: session.token.expose(),
                    i: session.id_token.as_ref().map(Secret::expose),
                    r: session.refresh_token.as_ref().map(Secret::expose),
                    e: session.expires_at.map(unix_secs),
                };
                self.keys
                    .seal(&self.name, "session", &sealed, self.max_age(session))
                    .ok_or_else(|| Error::new(ErrorKind::SessionTooLarge))?
            }
        };
        if value.len() > self.ceiling {
            return Err(Error::new(ErrorKind::SessionTooLarge));
        }
        Ok(value)
    }

    /// The session in a cookie value; `None` if it can never be valid.
    pub(crate) fn decode(&self, wire: &[u8]) -> Option<Session> {
        match self.storage {
            SessionStorage::Plain => decode_token(wire, self.ceiling).map(Session::new),
            SessionStorage::Sealed => {
                if wire.len() > self.ceiling {
                    return None;
                }
                let value = std::str::from_utf8(wire).ok()?;
                let sealed: SealedSession<String> = self.keys.open(&self.name, "session", value)?;
                let mut session = Session::new(SessionToken::new(sealed.t)?);
                session.id_token = sealed.i.map(Secret::new);
                session.refresh_token = sealed.r.map(Secret::new);
                session.expires_at = sealed.e.map(|s| UNIX_EPOCH + Duration::from_secs(s));
                Some(session)
            }
        }
    }

    /// Reads the session of a request.
    #[cfg(test)]
    pub(crate) fn find(&self, finder: &CookieFinder, headers: &HeaderMap) -> SessionCookie {
        let scan = finder.scan(headers);
        match &scan {
            CookieScan::Absent => SessionCookie::Absent,
            CookieScan::Ambiguous => SessionCookie::Ambiguous,
            CookieScan::Malformed(_) => SessionCookie::Malformed,
            CookieScan::Present(_) | CookieScan::Chunked { .. } => WireValue::of(&scan)
                .and_then(|wire| self.decode(wire.as_bytes()))
                .map_or(SessionCookie::Malformed, SessionCookie::Present),
        }
    }

    /// The `Set-Cookie` lines that store `wire` for `max_age`, and remove
    /// the forms the request carried that they do not overwrite.
    pub(crate) fn set_lines(&self, wire: &str, max_age: Duration, had: Presence) -> Vec<String> {
        let mut lines = Vec::with_capacity(2);
        if wire.len() <= MAX_VALUE_LEN {
            lines.push(self.attributes.build(&self.name, wire.to_owned(), max_age));
            for index in (0..MAX_CHUNKS).filter(|&i| had.has_chunk(i)) {
                lines.push(self.attributes.removal(&chunk_name(&self.name, index)));
            }
            return lines;
        }
        // Chunk boundaries fall on bytes; the value is ASCII.
        let parts: Vec<&[u8]> = wire.as_bytes().chunks(MAX_VALUE_LEN).collect();
        for (index, part) in parts.iter().enumerate() {
            let value = String::from_utf8_lossy(part).into_owned();
            lines.push(
                self.attributes
                    .build(&chunk_name(&self.name, index), value, max_age),
            );
        }
        if had.has_single() {
            lines.push(self.attributes.removal(&self.name));
        }
        for index in (parts.len()..MAX_CHUNKS).filter(|&i| had.has_chunk(i)) {
            lines.push(self.attributes.removal(&chunk_name(&self.name, index)));
        }
        lines
    }

    /// A `Cookie` request header carrying `wire` as a browser would send
    /// it after [`set_lines`](Self::set_lines) (tests and benchmarks).
    #[cfg(feature = "test-util")]
    pub(crate) fn cookie_header(&self, wire: &str) -> String {
        if wire.len() <= MAX_VALUE_LEN {
            return format!("{}={wire}", self.name);
        }
        wire.as_bytes()
            .chunks(MAX_VALUE_LEN)
            .enumerate()
            .map(|(index, part)| {
                format!(
                    "{}={}",
                    chunk_name(&self.name, index),
                    String::from_utf8_lossy(part)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The lines that remove the session cookie in every form the request
    /// carried (at least the unchunked one).
    pub(crate) fn removal_lines(&self, had: Presence) -> Vec<String> {
        let mut lines = vec![self.attributes.removal(&self.name)];
        for index in (0..MAX_CHUNKS).filter(|&i| had.has_chunk(i)) {
            lines.push(self.attributes.removal(&chunk_name(&self.name, index)));
        }
        lines
    }
}

fn chunk_name(name: &str, index: usize) -> String {
    format!("{name}__{index}")
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The attributes every cookie of ours carries.
#[derive(Debug, Clone)]
pub(crate) struct CookieAttributes {
    pub(crate) secure: bool,
}

impl CookieAttributes {
    pub(crate) fn build(&self, name: &str, value: String, max_age: Duration) -> String {
        let max_age = time::Duration::try_from(max_age).unwrap_or(time::Duration::ZERO);
        Cookie::build((name.to_owned(), value))
            .path("/")
            .secure(self.secure)
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(max_age)
            .build()
            .to_string()
    }

    /// A deletion that mirrors the attributes the cookie was set with.
    pub(crate) fn removal(&self, name: &str) -> String {
        self.build(name, String::new(), Duration::ZERO)
    }
}

/// The app key and previous keys still accepted for decryption.
#[derive(Clone)]
pub(crate) struct Keys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub(crate) fn new(current: Key, previous: Vec<Key>) -> Self {
        Self { current, previous }
    }

    /// 32 bytes derived from the current key, for keyed hashes.
    pub(crate) fn hash_key(&self) -> &[u8] {
        self.current.signing()
    }

    /// A 64-byte key for another use, derived from the current key with
    /// HMAC-SHA256 under `label` (one half for signing, one for
    /// encryption): a value sealed under one use never opens under another.
    #[cfg_attr(not(feature = "axum-extra"), allow(dead_code))]
    pub(crate) fn derive(&self, label: &str) -> Key {
        Self::derive_from(&self.current, label)
    }

    /// The keys for another use ([`derive`](Self::derive)), the previous
    /// ones included, so values sealed before a key rotation still open.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn derived(&self, label: &str) -> Self {
        Self {
            current: Self::derive_from(&self.current, label),
            previous: self
                .previous
                .iter()
                .map(|key| Self::derive_from(key, label))
                .collect(),
        }
    }

    #[cfg_attr(not(any(feature = "axum-extra", feature = "redis")), allow(dead_code))]
    fn derive_from(key: &Key, label: &str) -> Key {
        use hmac::{Hmac, Mac, digest::KeyInit};
        let mut master = [0u8; 64];
        for (half, part) in master.chunks_mut(32).zip(["signing", "encryption"]) {
            // HMAC takes a key of any length; the 64-byte block form keeps
            // this infallible.
            let mut block = [0u8; 64];
            block.copy_from_slice(key.master());
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new(&block.into());
            mac.update(label.as_bytes());
            mac.update(b"\0");
            mac.update(part.as_bytes());
            half.copy_from_slice(&mac.finalize().into_bytes());
        }
        Key::from(&master)
    }

    /// Encrypts `payload` for the cookie `name` (the name is the AEAD's
    /// associated data, so a value cannot move to another cookie). The
    /// payload carries its purpose and its own expiry.
    pub(crate) fn seal<T: Serialize>(
        &self,
        name: &str,
        purpose: &str,
        payload: &T,
        ttl: Duration,
    ) -> Option<String> {
        let expires = unix_now().saturating_add(ttl.as_secs());
        let envelope = Envelope {
            purpose,
            expires,
            payload,
        };
        let json = serde_json::to_string(&envelope).ok()?;
        let mut jar = CookieJar::new();
        jar.private_mut(&self.current)
            .add(Cookie::new(name.to_owned(), json));
        jar.get(name).map(|c| c.value().to_owned())
    }

    /// Decrypts and checks a sealed value: right cookie name, right purpose,
    /// not expired. Any key, current or previous, may open it.
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        name: &str,
        purpose: &str,
        value: &str,
    ) -> Option<T> {
        let jar = CookieJar::new();
        let plain = std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| {
                jar.private(key)
                    .decrypt(Cookie::new(name.to_owned(), value.to_owned()))
            })?;
        let envelope: OwnedEnvelope<T> = serde_json::from_str(plain.value()).ok()?;
        (envelope.purpose == purpose && envelope.expires >= unix_now()).then_some(envelope.payload)
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    purpose: &'a str,
    expires: u64,
    payload: &'a T,
}

#[derive(serde::Deserialize)]
struct OwnedEnvelope<T> {
    purpose: String,
    expires: u64,
    payload: T,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn token(s: &str) -> SessionCookie {
        SessionCookie::Present(Session::new(SessionToken::new(s).unwrap()))
    }

    fn codec(storage: SessionStorage, name: &str) -> SessionCodec {
        SessionCodec::new(
            storage,
            name.to_owned(),
            Keys::new(Key::generate(), vec![]),
            DEFAULT_CEILING,
            CookieAttributes { secure: true },
            Duration::from_secs(3600),
        )
    }

    fn find(name: &str, headers: &HeaderMap) -> SessionCookie {
        codec(SessionStorage::Plain, name).find(&CookieFinder::new(name), headers)
    }

    fn scan_session_cookie<'h>(headers: &'h HeaderMap, name: &str) -> CookieScan<'h> {
        CookieFinder::new(name).scan(headers)
    }

    #[test]
    fn session_cookie_scan_table() {
        // SECURITY.md T-C3, T-C5 and Appendix B's cookie header set.
        let n = "__Host-sid";
        let big = format!("__Host-sid={}", "a".repeat(64 * 1024));
        let over_one = format!("__Host-sid={}", "a".repeat(MAX_VALUE_LEN + 1));
        let many: String =
            (0..500).map(|i| format!("c{i}=v; ")).collect::<String>() + "__Host-sid=abc";
        let cases: Vec<(&str, Vec<&[u8]>, SessionCookie)> = vec![
            ("absent", vec![b"a=b"], SessionCookie::Absent),
            ("simple", vec![b"__Host-sid=abc"], token("abc")),
            (
                "non-utf8 neighbour (T-C5)",
                vec![b"_ga=\xff\xfe; __Host-sid=VALID"],
                token("VALID"),
            ),
            (
                "non-utf8 in ours",
                vec![b"__Host-sid=VAL\x80ID"],
                SessionCookie::Malformed,
            ),
            (
                "quoted value belongs to the value",
                vec![b"__Host-sid=\"VALID\""],
                SessionCookie::Malformed,
            ),
            (
                "junk around",
                vec![b"__Host-sid=VALID;;; ;=x; =; novalue"],
                token("VALID"),
            ),
            (
                "percent junk",
                vec![b"__Host-sid=%ZZ"],
                SessionCookie::Malformed,
            ),
            (
                "duplicate names differ (T-C3)",
                vec![b"__Host-sid=A; __Host-sid=B"],
                SessionCookie::Ambiguous,
            ),
            (
                "duplicate same value",
                vec![b"__Host-sid=A; __Host-sid=A"],
                token("A"),
            ),
            (
                "case variant is not ours",
                vec![b"__host-sid=evil"],
                SessionCookie::Absent,
            ),
            (
                "split headers",
                vec![b"a=1", b"__Host-sid=abc"],
                token("abc"),
            ),
            (
                "split headers disagree",
                vec![b"__Host-sid=x", b"__Host-sid=y"],
                SessionCookie::Ambiguous,
            ),
            (
                "64 KiB value",
                vec![big.as_bytes()],
                SessionCookie::Malformed,
            ),
            (
                "one cookie longer than any we set",
                vec![over_one.as_bytes()],
                SessionCookie::Malformed,
            ),
            ("500 cookies", vec![many.as_bytes()], token("abc")),
            (
                "chunks in order (T-C4)",
                vec![b"__Host-sid__1=def; a=b; __Host-sid__0=abc"],
                token("abcdef"),
            ),
            (
                "chunks split over headers",
                vec![b"__Host-sid__0=abc", b"__Host-sid__1=def"],
                token("abcdef"),
            ),
            (
                "a gap in the chunks",
                vec![b"__Host-sid__0=abc; __Host-sid__2=def"],
                SessionCookie::Malformed,
            ),
            (
                "a lone chunk",
                vec![b"__Host-sid__0=abc"],
                SessionCookie::Malformed,
            ),
            (
                "both forms at once (T-C3: never chosen, never deleted)",
                vec![b"__Host-sid=abc; __Host-sid__0=abc; __Host-sid__1=def"],
                SessionCookie::Ambiguous,
            ),
            (
                "a chunk index out of range is not ours",
                vec![b"__Host-sid__0=abc; __Host-sid__1=def; __Host-sid__7=x"],
                token("abcdef"),
            ),
            (
                "a planted out-of-range chunk beside the session",
                vec![b"__Host-sid=abc; __Host-sid__9=x"],
                token("abc"),
            ),
            (
                "a duplicated chunk that differs (T-C3)",
                vec![b"__Host-sid__0=abc; __Host-sid__1=def; __Host-sid__1=xyz"],
                SessionCookie::Ambiguous,
            ),
            (
                "a duplicated chunk that agrees",
                vec![b"__Host-sid__0=abc; __Host-sid__1=def; __Host-sid__1=def"],
                token("abcdef"),
            ),
            (
                "a longer name is not a chunk",
                vec![b"__Host-sid__x=1; __Host-sid__10=2"],
                SessionCookie::Absent,
            ),
            (
                "empty value",
                vec![b"__Host-sid="],
                SessionCookie::Malformed,
            ),
            (
                "prefix of another name",
                vec![b"__Host-sidx=1"],
                SessionCookie::Absent,
            ),
        ];
        for (name, values, expected) in cases {
            assert_eq!(find(n, &headers(&values)), expected, "{name}");
        }
    }

    /// The targeted scan picks the same value as the `cookie` crate's
    /// full parser, on random headers built from an adversarial alphabet.
    #[test]
    fn targeted_scan_agrees_with_the_cookie_crate() {
        use rand::{Rng, SeedableRng};
        let name = "__Host-sid";
        let pieces = [
            "__Host-sid",
            "__Host-sid",
            "__host-sid",
            "__Host-sidx",
            "x__Host-sid",
            "a",
            "b",
            "c",
            "=",
            "=",
            ";",
            ";",
            "; ",
            " ",
            "\t",
            "\"",
            "val",
            "tok-1",
            "tok.2",
            "__Host-",
            "sid",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut checked = [0, 0];
        // Long headers take the other path (a search for the name).
        let filler = "_ga=GA1.1.1418365342.1732924800; consent=analytics%2Cads; ".repeat(3);
        for round in 0..200_000 {
            let long = round % 2 == 1;
            let random: String = (0..rng.gen_range(1..12))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let header = if long {
                let cut = rng.gen_range(0..=random.len());
                let (head, tail) = random.split_at(cut);
                match rng.gen_range(0..3) {
                    0 => format!("{filler}{random}"),
                    1 => format!("{random}; {filler}"),
                    _ => format!("{head}{filler}{tail}"),
                }
            } else {
                random
            };
            let Ok(value) = http::HeaderValue::from_str(&header) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(COOKIE, value);
            let ours = scan_session_cookie(&map, name);
            let theirs: Vec<String> = Cookie::split_parse(header.as_str())
                .filter_map(Result::ok)
                .filter(|c| c.name() == name)
                .map(|c| c.value().to_owned())
                .collect();
            let expected = match theirs.as_slice() {
                [] => CookieScan::Absent,
                [first, rest @ ..] if rest.iter().all(|v| v == first) => {
                    CookieScan::Present(first.as_bytes())
                }
                _ => CookieScan::Ambiguous,
            };
            // The cookie crate drops pairs it cannot parse (e.g. an empty
            // name before ours); compare where it kept everything.
            let parsed_all = Cookie::split_parse(header.as_str()).all(|c| c.is_ok());
            if parsed_all {
                assert_eq!(ours, expected, "header {header:?}");
                checked[usize::from(long)] += 1;
            }
        }
        assert!(checked.iter().all(|&n| n > 10_000), "{checked:?}");
    }

    /// The cookies a browser keeps from `lines`, as one `Cookie` header.
    fn browser_header(lines: &[String]) -> HeaderMap {
        let kept: Vec<String> = lines
            .iter()
            .map(|line| Cookie::parse(line.as_str()).unwrap())
            .filter(|c| !c.value().is_empty())
            .map(|c| format!("{}={}", c.name(), c.value()))
            .collect();
        headers(&[kept.join("; ").as_bytes()])
    }

    #[test]
    fn t_c4_sessions_over_one_cookie_are_chunked_and_over_the_ceiling_refused() {
        let name = "__Host-authgate";
        let codec = codec(SessionStorage::Plain, name);
        let finder = CookieFinder::new(name);
        for (len, special, chunks) in [
            (3000, false, Some(1)),
            (4000, false, Some(1)),
            (4001, false, Some(2)),
            (8000, false, Some(2)),
            (8001, false, None),
            (10_000, false, None),
            (2900, true, Some(1)),
            (3000, true, Some(2)),
            (6000, true, None),
        ] {
            let mut raw = "a".repeat(len);
            if special {
                raw.replace_range(0..1, ";");
            }
            let session = Session::new(SessionToken::new(raw).unwrap());
            let encoded = codec.encode(&session);
            let Some(chunks) = chunks else {
                let err = encoded.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::SessionTooLarge, "{len}");
                continue;
            };
            let wire = encoded.unwrap();
            let lines = codec.set_lines(&wire, Duration::from_secs(60), Presence::default());
            assert_eq!(lines.len(), chunks, "{len} special={special}");
            for line in &lines {
                let cookie = Cookie::parse(line.as_str()).unwrap();
                // RFC 6265bis §5.6: name + value within 4096 bytes.
                assert!(cookie.name().len() + cookie.value().len() <= 4096, "{len}");
            }
            let header = browser_header(&lines);
            assert_eq!(
                codec.find(&finder, &header),
                SessionCookie::Present(session),
                "{len} special={special}"
            );
        }
    }

    #[test]
    fn writing_one_form_removes_the_other() {
        let name = "__Host-authgate";
        let codec = codec(SessionStorage::Plain, name);
        let long = "b".repeat(9_000 / 2);
        let chunked = codec
            .encode(&Session::new(SessionToken::new(long).unwrap()))
            .unwrap();
        assert!(chunked.len() > MAX_VALUE_LEN);
        let removed = |lines: Vec<String>| -> Vec<String> {
            lines
                .iter()
                .map(|l| Cookie::parse(l.as_str()).unwrap())
                .filter(|c| c.value().is_empty())
                .map(|c| c.name().to_owned())
                .collect()
        };
        let minute = Duration::from_secs(60);
        // Chunked over a single cookie: the single one is removed.
        let lines = codec.set_lines(&chunked, minute, Presence::single());
        assert_eq!(removed(lines), [name]);
        // Single over two chunks: both chunks are removed.
        let had = finder_presence(name, "__Host-authgate__0=a; __Host-authgate__1=b");
        let lines = codec.set_lines("short", minute, had);
        assert_eq!(removed(lines), ["__Host-authgate__0", "__Host-authgate__1"]);
        // Removal clears every form the request carried.
        let lines = codec.removal_lines(had);
        assert_eq!(lines.len(), 3);
    }

    fn finder_presence(name: &str, header: &str) -> Presence {
        CookieFinder::new(name)
            .scan(&headers(&[header.as_bytes()]))
            .presence()
    }

    #[test]
    fn sealed_sessions_round_trip_and_are_bound_to_the_cookie_name() {
        let name = "__Host-authgate";
        let codec = codec(SessionStorage::Sealed, name);
        let mut session = Session::new(SessionToken::new("access").unwrap())
            .with_id_token(Secret::new("header.claims.signature"))
            .with_refresh_token(Secret::new("refresh"))
            .with_expires_at(UNIX_EPOCH + Duration::from_secs(4_000_000_000));
        let wire = codec.encode(&session).unwrap();
        assert!(!wire.contains("access") && !wire.contains("refresh"));
        assert_eq!(codec.decode(wire.as_bytes()), Some(session.clone()));
        // A whole token set over one cookie: chunked, still one AEAD.
        session.id_token = Some(Secret::new("x".repeat(5_000)));
        let wire = codec.encode(&session).unwrap();
        let lines = codec.set_lines(&wire, Duration::from_secs(60), Presence::default());
        assert_eq!(lines.len(), 2);
        let header = browser_header(&lines);
        assert_eq!(
            codec.find(&CookieFinder::new(name), &header),
            SessionCookie::Present(session)
        );
        // Another cookie name does not open it; a flipped byte does not.
        let other = super::tests::codec(SessionStorage::Sealed, "__Host-other");
        assert_eq!(other.decode(wire.as_bytes()), None);
        let mut bytes = wire.into_bytes();
        bytes[20] ^= 1;
        assert_eq!(codec.decode(&bytes), None);
    }

    #[test]
    fn token_encoding_round_trips_any_token() {
        // SECURITY.md T-C7: `;`, `,`, space, `"`, `\`, non-ASCII.
        for raw in [
            "plain-Token_1.2",
            "a;b",
            "a,b",
            "a b",
            "q\"uote",
            "back\\slash",
            "ünï",
            "~x",
        ] {
            let token = SessionToken::new(raw).unwrap();
            let value = encode_token(&token);
            assert!(
                value.bytes().all(|b| is_plain_token_byte(b) || b == b'~'),
                "{raw}: {value}"
            );
            assert_eq!(
                decode_token(value.as_bytes(), MAX_VALUE_LEN),
                Some(token),
                "{raw}"
            );
        }
    }

    #[test]
    fn derived_keys_are_stable_and_separate_from_the_app_key() {
        // Issue 11 point 2: the app's cookie-jar key follows the app key
        // (same key, same derived key: one secret, one rotation), and
        // nothing sealed under one opens under the other.
        let master = Key::from(&[7u8; 64]);
        let keys = Keys::new(master.clone(), vec![]);
        let again = Keys::new(master.clone(), vec![]);
        let jar = keys.derive("jars");
        assert_eq!(jar.master(), again.derive("jars").master());
        assert_ne!(jar.master(), master.master());
        assert_ne!(jar.master(), keys.derive("other").master());
        let other_app = Keys::new(Key::from(&[8u8; 64]), vec![]);
        assert_ne!(jar.master(), other_app.derive("jars").master());
        let sealed = keys
            .seal("flash", "flow", &"payload", Duration::from_secs(60))
            .unwrap();
        let with_jar_key = Keys::new(jar, vec![]);
        assert_eq!(with_jar_key.open::<String>("flash", "flow", &sealed), None);
    }

    #[test]
    fn sealed_cookies_are_bound_to_name_purpose_and_key() {
        let keys = Keys::new(Key::generate(), vec![]);
        let sealed = keys
            .seal(
                "__Host-ag-flow",
                "flow",
                &"payload",
                Duration::from_secs(600),
            )
            .unwrap();
        let open = |name, purpose, value: &str| keys.open::<String>(name, purpose, value);
        assert_eq!(
            open("__Host-ag-flow", "flow", &sealed).as_deref(),
            Some("payload")
        );
        // T-C6: another cookie name or purpose does not open it.
        assert_eq!(open("__Host-ag", "flow", &sealed), None);
        assert_eq!(open("__Host-ag-flow", "reset", &sealed), None);
        // T-B1.10: one flipped byte.
        let mut bytes = sealed.clone().into_bytes();
        bytes[10] ^= 1;
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(open("__Host-ag-flow", "flow", &flipped), None);
        // Rotation: a previous key still opens; an unknown key does not.
        let rotated = Keys::new(Key::generate(), vec![keys.current.clone()]);
        assert_eq!(
            rotated
                .open::<String>("__Host-ag-flow", "flow", &sealed)
                .as_deref(),
            Some("payload")
        );
        let stranger = Keys::new(Key::generate(), vec![]);
        assert_eq!(
            stranger.open::<String>("__Host-ag-flow", "flow", &sealed),
            None
        );
        // Expired.
        let expired = keys.seal("n", "flow", &"p", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(keys.open::<String>("n", "flow", &expired), None);
    }

    #[test]
    fn set_cookie_lines_parse_with_the_cookie_crate() {
        let attrs = CookieAttributes { secure: true };
        let line = attrs.build("__Host-ag", "abc".into(), Duration::from_secs(60));
        let parsed = Cookie::parse(line).unwrap();
        assert_eq!(parsed.name(), "__Host-ag");
        assert_eq!(parsed.secure(), Some(true));
        assert_eq!(parsed.http_only(), Some(true));
        assert_eq!(parsed.same_site(), Some(SameSite::Lax));
        assert_eq!(parsed.path(), Some("/"));
        assert_eq!(parsed.domain(), None);
        let removal = Cookie::parse(attrs.removal("__Host-ag")).unwrap();
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(time::Duration::ZERO));
        assert_eq!(removal.secure(), Some(true));
        assert_eq!(removal.path(), Some("/"));
    }
}
