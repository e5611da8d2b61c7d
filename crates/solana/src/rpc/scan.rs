//! A strict JSON scanner for the one hot response shape: the accounts of a
//! `getProgramAccounts` result (and of its V2 pages).
//!
//! serde_json's visitor machinery cost several times the base64 decoding of
//! the account data itself, so these responses are read by hand: keys are
//! compared as raw bytes, strings are borrowed from the body (copied only
//! when they hold escapes), unknown members are skipped without building
//! anything, and the repeated `owner` is decoded once. Each keyed account
//! is first tried in the exact compact layout RPC nodes emit, compared as
//! fixed text around the values; any other layout, and any error, is read
//! again by the general reader, so both accept and refuse alike (tested).
//! Everything else in the module (small responses, error objects) stays on
//! serde.
//!
//! Strict means what serde_json rejects is rejected here too: bad syntax,
//! raw control characters in strings, bad escapes, duplicate fields that
//! are read, trailing characters, nesting deeper than 128.

use std::borrow::Cow;

use base64::Engine as _;

use super::{AccountRef, BASE64};
use crate::pubkey::Pubkey;

/// Why a body could not be read; the message names the byte offset.
pub(super) type ScanResult<T> = Result<T, String>;

/// serde_json's default recursion limit.
const MAX_DEPTH: usize = 128;

pub(super) struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Scanner { bytes, pos: 0 }
    }

    fn error(&self, what: impl std::fmt::Display) -> String {
        format!("{what} at byte {}", self.pos)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> ScanResult<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format_args!("expected `{}`", char::from(c))))
        }
    }

    fn end(&mut self) -> ScanResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> ScanResult<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// A string's raw content: borrowed from the body, or unescaped into an
    /// owned copy when it has escapes. Bytes are not checked for UTF-8 (as
    /// serde_json's `deserialize_bytes`): every caller checks its alphabet.
    fn string(&mut self) -> ScanResult<Cow<'a, [u8]>> {
        let text = self.string_unchecked()?;
        if text.iter().any(|&c| c < 0x20) {
            return Err(self.error("control character in string"));
        }
        Ok(text)
    }

    /// [`Self::string`] without the check for raw control characters, for
    /// base64 and base58 text: their decoders reject those bytes anyway,
    /// and the data strings are the longest in the body.
    fn string_unchecked(&mut self) -> ScanResult<Cow<'a, [u8]>> {
        self.string_unchecked_with(find_quote_or_backslash)
    }

    /// [`Self::string_unchecked`] for long text (account data): a SIMD
    /// search pays for its call there.
    fn long_string_unchecked(&mut self) -> ScanResult<Cow<'a, [u8]>> {
        self.string_unchecked_with(|rest| memchr::memchr2(b'"', b'\\', rest))
    }

    fn string_unchecked_with(
        &mut self,
        find_end: impl Fn(&[u8]) -> Option<usize>,
    ) -> ScanResult<Cow<'a, [u8]>> {
        self.eat(b'"')?;
        let start = self.pos;
        let rest = &self.bytes[start..];
        match find_end(rest) {
            Some(n) if rest[n] == b'"' => {
                self.pos = start + n + 1;
                Ok(Cow::Borrowed(&rest[..n]))
            }
            Some(_) => self.escaped_string(start).map(Cow::Owned),
            None => Err(self.error("unterminated string")),
        }
    }

    /// An object key: [`Self::string`] by a plain byte loop, which beats a
    /// word-wise search on strings this short.
    fn key(&mut self) -> ScanResult<Cow<'a, [u8]>> {
        self.eat(b'"')?;
        let start = self.pos;
        for (i, &c) in self.bytes[start..].iter().enumerate() {
            match c {
                b'"' => {
                    self.pos = start + i + 1;
                    return Ok(Cow::Borrowed(&self.bytes[start..start + i]));
                }
                b'\\' => return self.escaped_string(start).map(Cow::Owned),
                c if c < 0x20 => {
                    self.pos = start + i;
                    return Err(self.error("control character in string"));
                }
                _ => {}
            }
        }
        Err(self.error("unterminated string"))
    }

    fn escaped_string(&mut self, start: usize) -> ScanResult<Vec<u8>> {
        let mut out = Vec::new();
        self.pos = start;
        loop {
            let Some(&c) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => self.escape(&mut out)?,
                c if c < 0x20 => return Err(self.error("control character in string")),
                c => out.push(c),
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> ScanResult<()> {
        let Some(&e) = self.bytes.get(self.pos) else {
            return Err(self.error("unterminated string"));
        };
        self.pos += 1;
        let byte = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = self.hex4()?;
                let code = if (0xd800..0xdc00).contains(&unit) {
                    // A high surrogate must be followed by a low one.
                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                        return Err(self.error("lone surrogate in escape"));
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return Err(self.error("lone surrogate in escape"));
                    }
                    0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                } else {
                    unit
                };
                let ch =
                    char::from_u32(code).ok_or_else(|| self.error("lone surrogate in escape"))?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(byte);
        Ok(())
    }

    fn hex4(&mut self) -> ScanResult<u32> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("unterminated escape"))?;
        let mut v = 0;
        for &d in digits {
            let n = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A non-negative integer that fits u64 (no sign, fraction or exponent,
    /// as serde_json reads a `u64`).
    fn u64(&mut self) -> ScanResult<u64> {
        self.skip_ws();
        let start = self.pos;
        let mut v: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = self.bytes.get(self.pos) {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| self.error("number out of range"))?;
            self.pos += 1;
        }
        let digits = self.pos - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        let more = matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E'));
        if digits == 0 || leading_zero || more {
            return Err(self.error("expected an unsigned integer"));
        }
        Ok(v)
    }

    fn bool(&mut self) -> ScanResult<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.error("expected a boolean")),
        }
    }

    /// Any JSON number, checked against the grammar.
    fn number(&mut self) -> ScanResult<()> {
        let digits = |s: &mut Self| {
            let start = s.pos;
            while let Some(b'0'..=b'9') = s.bytes.get(s.pos) {
                s.pos += 1;
            }
            s.pos - start
        };
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let start = self.pos;
        let n = digits(self);
        if n == 0 || (n > 1 && self.bytes[start] == b'0') {
            return Err(self.error("invalid number"));
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// Skips one value of any kind, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> ScanResult<()> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(|s, _| s.skip_value(depth + 1)),
            Some(b'[') => self.array(|s| s.skip_value(depth + 1)),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// The raw text of the next value.
    fn raw_value(&mut self) -> ScanResult<&'a [u8]> {
        self.skip_ws();
        let start = self.pos;
        self.skip_value(1)?;
        Ok(&self.bytes[start..self.pos])
    }

    /// Reads an object, handing each member's key to `member`, which must
    /// consume the value.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &[u8]) -> ScanResult<()>,
    ) -> ScanResult<()> {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.key()?;
            self.eat(b':')?;
            member(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    /// Reads an array, `element` consuming each element.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> ScanResult<()>) -> ScanResult<()> {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// Sets a field read at most once.
    #[inline]
    fn once<T>(&self, slot: &mut Option<T>, name: &str, value: T) -> ScanResult<()> {
        if slot.is_some() {
            return Err(self.error(format_args!("duplicate field `{name}`")));
        }
        *slot = Some(value);
        Ok(())
    }
}

/// Where the first `"` or `\\` of `bytes` is, eight bytes at a time: strings
/// are mostly short keys, where a call into a SIMD search costs more than
/// it saves.
fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_byte = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = has_byte(word, b'"') | has_byte(word, b'\\');
        if found != 0 {
            // The lowest flagged byte is a true match (false flags only
            // appear above one).
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|i| at + i)
}

/// The length range of a 32-byte key's base58 text: 32 zero bytes are 32
/// '1's, 2^256 - 1 is 44 digits.
const KEY_TEXT_MIN: usize = 32;
const KEY_TEXT_MAX: usize = 44;

/// A cursor for [`AccountReader::exact_keyed_account`]: every read is
/// `None` where the text is not exactly what is expected.
struct Exact<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Exact<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Consumes `text` if the input continues with it.
    // Always inlined: with `text` a constant the compare is a few loads, not
    // a call to memcmp.
    #[inline(always)]
    fn lit(&mut self, text: &[u8]) -> bool {
        let found = self.bytes[self.pos..].starts_with(text);
        if found {
            self.pos += text.len();
        }
        found
    }

    /// Consumes `text` and a closing quote if the input continues with both.
    #[inline]
    fn lit_string_end(&mut self, text: &[u8]) -> bool {
        let rest = &self.bytes[self.pos..];
        let found = rest.starts_with(text) && rest.get(text.len()) == Some(&b'"');
        if found {
            self.pos += text.len() + 1;
        }
        found
    }

    #[inline(always)]
    fn expect(&mut self, text: &[u8]) -> Option<()> {
        self.lit(text).then_some(())
    }

    /// Base64 text up to and past its closing quote. An escape is not
    /// looked for: a backslash (or an escaped quote) is outside the base64
    /// alphabet and fails the decoding, as any other bad text.
    fn base64_text(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.pos..];
        let n = memchr::memchr(b'"', rest)?;
        self.pos += n + 1;
        Some(&rest[..n])
    }

    /// A base58 key's text and closing quote. The text of a 32-byte key is
    /// 32 to 44 characters, so the quote is looked for only there: a quote
    /// or backslash before it, being outside the base58 alphabet, fails the
    /// decoding like any other bad text.
    fn key(&mut self) -> Option<(&'a [u8], Pubkey)> {
        let rest = &self.bytes[self.pos..];
        let window = rest.get(KEY_TEXT_MIN..)?;
        let n = KEY_TEXT_MIN
            + window[..window.len().min(KEY_TEXT_MAX + 1 - KEY_TEXT_MIN)]
                .iter()
                .position(|&b| b == b'"')?;
        let text = &rest[..n];
        let key = crate::pubkey::decode_32(text)?;
        self.pos += n + 1;
        Some((text, Pubkey(key)))
    }

    fn pubkey(&mut self) -> Option<Pubkey> {
        self.key().map(|(_, key)| key)
    }

    /// A non-negative integer that fits u64, as [`Scanner::u64`] reads it.
    /// What follows is left to the next `expect`, so `1.5` or `1e3` are
    /// refused there.
    fn u64(&mut self) -> Option<u64> {
        let rest = &self.bytes[self.pos..];
        let mut v: u64 = 0;
        let mut digits = 0;
        while let Some(d) = rest.get(digits).map(|c| c.wrapping_sub(b'0'))
            && d <= 9
        {
            // Up to 19 digits cannot overflow; only a 20th needs checking.
            v = if digits < 19 {
                v * 10 + u64::from(d)
            } else {
                v.checked_mul(10)?.checked_add(u64::from(d))?
            };
            digits += 1;
        }
        if digits == 0 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        self.pos += digits;
        Some(v)
    }
}

/// A response envelope: the result as `result` read it, and the raw JSON of
/// `error` (rare, so left to serde).
pub(super) struct Envelope<'a, T> {
    pub result: Option<T>,
    pub error: Option<&'a [u8]>,
}

/// Reads a whole body; `result` reads the `result` member (`None` for null).
pub(super) fn envelope<'a, T>(
    body: &'a [u8],
    mut result: impl FnMut(&mut Scanner<'a>) -> ScanResult<Option<T>>,
) -> ScanResult<Envelope<'a, T>> {
    let mut s = Scanner::new(body);
    let mut read = None;
    let mut error = None;
    s.object(|s, key| match key {
        b"result" => {
            let value = result(s)?;
            s.once(&mut read, "result", value)
        }
        b"error" => {
            let raw = s.raw_value()?;
            s.once(&mut error, "error", raw)
        }
        _ => s.skip_value(1),
    })?;
    s.end()?;
    Ok(Envelope {
        result: read.flatten(),
        error,
    })
}

/// Visits accounts and decodes their data into one reused buffer.
pub(super) struct AccountReader<'v, F> {
    pub visit: &'v mut F,
    /// Decoded data of the account being visited, reused for the next.
    pub data: &'v mut Vec<u8>,
    /// The last `owner` text and its key: all accounts of a program scan
    /// share one owner, so it is decoded once.
    pub owner: &'v mut Option<(Vec<u8>, Pubkey)>,
    /// Try the exact layout RPC nodes emit before the general reader
    /// (always, except in tests that compare the two).
    pub exact_layout: bool,
}

impl<'v, F: FnMut(&Pubkey, AccountRef<'_>)> AccountReader<'v, F> {
    /// A reader that tries the exact layout first, with buffers the caller
    /// keeps across responses (pages).
    pub fn new(
        visit: &'v mut F,
        data: &'v mut Vec<u8>,
        owner: &'v mut Option<(Vec<u8>, Pubkey)>,
    ) -> Self {
        AccountReader {
            visit,
            data,
            owner,
            exact_layout: true,
        }
    }

    /// A `getProgramAccounts` result: an array of keyed accounts, or
    /// `{context, value}`; `None` for null. Yields the account count.
    pub fn accounts(&mut self, s: &mut Scanner<'_>) -> ScanResult<Option<usize>> {
        match s.peek() {
            Some(b'n') => s.literal(b"null").map(|()| None),
            Some(b'[') => self.account_array(s).map(Some),
            Some(b'{') => {
                let mut count = None;
                s.object(|s, key| match key {
                    b"value" => {
                        if s.peek() != Some(b'[') {
                            return Err(s.error("expected an array of keyed accounts"));
                        }
                        let n = self.account_array(s)?;
                        s.once(&mut count, "value", n)
                    }
                    _ => s.skip_value(1),
                })?;
                count
                    .map(Some)
                    .ok_or_else(|| s.error("missing field `value`"))
            }
            _ => Err(s.error("expected an array of keyed accounts or {context, value}")),
        }
    }

    /// A `getProgramAccountsV2` page, `{accounts, paginationKey}`; `None`
    /// for null. Yields the page's account count and the next key.
    pub fn v2_page(&mut self, s: &mut Scanner<'_>) -> ScanResult<Option<(usize, Option<String>)>> {
        if s.peek() == Some(b'n') {
            return s.literal(b"null").map(|()| None);
        }
        let mut count = None;
        let mut next = None;
        s.object(|s, key| match key {
            b"accounts" => {
                let n = self
                    .accounts(s)?
                    .ok_or_else(|| s.error("expected an array of keyed accounts"))?;
                s.once(&mut count, "accounts", n)
            }
            b"paginationKey" => {
                let key = match s.peek() {
                    Some(b'n') => s.literal(b"null").map(|()| None)?,
                    _ => Some(
                        String::from_utf8(s.string()?.into_owned())
                            .map_err(|_| s.error("pagination key is not UTF-8"))?,
                    ),
                };
                s.once(&mut next, "paginationKey", key)
            }
            _ => s.skip_value(1),
        })?;
        let count = count.ok_or_else(|| s.error("missing field `accounts`"))?;
        Ok(Some((count, next.flatten())))
    }

    fn account_array(&mut self, s: &mut Scanner<'_>) -> ScanResult<usize> {
        let mut count = 0;
        s.array(|s| {
            self.keyed_account(s)?;
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }

    /// `{pubkey, account: {lamports, owner, data, executable}}`, visited
    /// once both halves are read (in either order).
    fn keyed_account(&mut self, s: &mut Scanner<'_>) -> ScanResult<()> {
        let start = s.pos;
        let (pubkey, (lamports, owner, executable)) = match self.exact_keyed_account(s) {
            Some(read) => read,
            // Any other layout, or an error: the general reader, which also
            // names what is wrong.
            None => {
                s.pos = start;
                self.general_keyed_account(s)?
            }
        };
        (self.visit)(
            &pubkey,
            AccountRef {
                lamports,
                owner,
                data: self.data,
                executable,
            },
        );
        Ok(())
    }

    /// [`Self::keyed_account`]'s halves in any order and layout.
    fn general_keyed_account(
        &mut self,
        s: &mut Scanner<'_>,
    ) -> ScanResult<(Pubkey, (u64, Pubkey, bool))> {
        let mut pubkey = None;
        let mut account = None;
        s.object(|s, key| match key {
            b"pubkey" => {
                let text = s.string_unchecked()?;
                let key = Pubkey::from_base58(&text).map_err(|e| s.error(e))?;
                s.once(&mut pubkey, "pubkey", key)
            }
            b"account" => {
                let fields = self.account(s)?;
                s.once(&mut account, "account", fields)
            }
            _ => s.skip_value(1),
        })?;
        let pubkey = pubkey.ok_or_else(|| s.error("missing field `pubkey`"))?;
        let account = account.ok_or_else(|| s.error("missing field `account`"))?;
        Ok((pubkey, account))
    }

    /// An account's fields; its data goes to the shared buffer.
    fn account(&mut self, s: &mut Scanner<'_>) -> ScanResult<(u64, Pubkey, bool)> {
        let mut lamports = None;
        let mut owner = None;
        let mut data = None;
        let mut executable = None;
        s.object(|s, key| match key {
            b"lamports" => {
                let v = s.u64()?;
                s.once(&mut lamports, "lamports", v)
            }
            b"owner" => {
                let text = s.string_unchecked()?;
                let key = match &*self.owner {
                    Some((cached, key)) if **cached == *text => *key,
                    _ => {
                        let key = Pubkey::from_base58(&text).map_err(|e| s.error(e))?;
                        *self.owner = Some((text.into_owned(), key));
                        key
                    }
                };
                s.once(&mut owner, "owner", key)
            }
            b"data" => {
                s.once(&mut data, "data", ())?;
                self.base64_data(s)
            }
            b"executable" => {
                let v = s.bool()?;
                s.once(&mut executable, "executable", v)
            }
            _ => s.skip_value(1),
        })?;
        let lamports = lamports.ok_or_else(|| s.error("missing field `lamports`"))?;
        let owner = owner.ok_or_else(|| s.error("missing field `owner`"))?;
        data.ok_or_else(|| s.error("missing field `data`"))?;
        Ok((lamports, owner, executable.unwrap_or(false)))
    }

    /// A keyed account in the exact compact layout RPC nodes emit, members
    /// in sorted order (`account` first) or `pubkey` first, read by
    /// comparing its fixed text and scanning only the values. `None` on the
    /// first byte that differs, and on any value the general reader would
    /// reject: the caller then rereads the account from `s`'s position,
    /// which this leaves where it was. On success `s` is past the object
    /// and the data is decoded into the shared buffer.
    ///
    /// The general reader spent about 300 ns per account on whitespace,
    /// key matching and per-member bookkeeping; the fixed layout needs none.
    fn exact_keyed_account(
        &mut self,
        s: &mut Scanner<'_>,
    ) -> Option<(Pubkey, (u64, Pubkey, bool))> {
        if !self.exact_layout {
            return None;
        }
        let mut c = Exact {
            bytes: s.bytes,
            pos: s.pos,
        };
        c.skip_ws();
        let read = if c.lit(br#"{"account":"#) {
            let fields = self.exact_account(&mut c)?;
            c.expect(br#","pubkey":""#)?;
            (c.pubkey()?, fields)
        } else if c.lit(br#"{"pubkey":""#) {
            let pubkey = c.pubkey()?;
            c.expect(br#","account":"#)?;
            (pubkey, self.exact_account(&mut c)?)
        } else {
            return None;
        };
        c.expect(b"}")?;
        s.pos = c.pos;
        Some(read)
    }

    /// `{"data":["<base64>","base64"],"executable":..,"lamports":..,
    /// "owner":"..","rentEpoch":..,"space":..}` for [`Self::exact_keyed_account`].
    fn exact_account(&mut self, c: &mut Exact<'_>) -> Option<(u64, Pubkey, bool)> {
        c.expect(br#"{"data":[""#)?;
        let text = c.base64_text()?;
        c.expect(br#","base64"],"executable":"#)?;
        let executable = if c.lit(b"true") {
            true
        } else if c.lit(b"false") {
            false
        } else {
            return None;
        };
        c.expect(br#","lamports":"#)?;
        let lamports = c.u64()?;
        c.expect(br#","owner":""#)?;
        let owner = match &*self.owner {
            // Equal text is the equal key; and as a 32-byte key has one
            // canonical text (the only one that decodes: a leading '1' per
            // zero byte, then no leading zero digit), the cache hits for
            // every account of the program.
            Some((cached, key)) if c.lit_string_end(cached) => *key,
            _ => {
                let (text, key) = c.key()?;
                *self.owner = Some((text.to_vec(), key));
                key
            }
        };
        c.expect(br#","rentEpoch":"#)?;
        // Nearly every account is rent-exempt, with this epoch.
        if !c.lit(b"18446744073709551615") {
            c.u64()?;
        }
        c.expect(br#","space":"#)?;
        c.u64()?;
        c.expect(b"}")?;
        self.data.clear();
        BASE64.decode_vec(text, self.data).ok()?;
        Some((lamports, owner, executable))
    }

    /// `["<base64>", "base64"]`, decoded into the shared buffer.
    fn base64_data(&mut self, s: &mut Scanner<'_>) -> ScanResult<()> {
        s.eat(b'[')?;
        let text = s.long_string_unchecked()?;
        s.eat(b',')?;
        let encoding = s.string_unchecked()?;
        s.eat(b']')?;
        if *encoding != *b"base64" {
            return Err(s.error(format_args!(
                "account data encoding {:?}, expected base64",
                String::from_utf8_lossy(&encoding)
            )));
        }
        self.data.clear();
        BASE64
            .decode_vec(&*text, self.data)
            .map_err(|e| s.error(format_args!("bad base64 account data: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Account;
    use proptest::prelude::*;

    /// What a body reads as: the accounts visited, then the envelope's
    /// result and raw error, or the scanner's error.
    type Read = (
        Vec<(Pubkey, Account)>,
        ScanResult<(Option<usize>, Option<Vec<u8>>)>,
    );

    fn read(body: &[u8], exact_layout: bool) -> Read {
        let mut seen = Vec::new();
        let mut visit = |key: &Pubkey, account: AccountRef<'_>| {
            seen.push((*key, account.to_account()));
        };
        let (mut data, mut owner) = (Vec::new(), None);
        let mut reader = AccountReader {
            visit: &mut visit,
            data: &mut data,
            owner: &mut owner,
            exact_layout,
        };
        let result = envelope(body, |s| reader.accounts(s))
            .map(|env| (env.result, env.error.map(<[u8]>::to_vec)));
        (seen, result)
    }

    /// One account's fields, as generated.
    #[derive(Clone, Debug)]
    struct Generated {
        key: Pubkey,
        data: Vec<u8>,
        lamports: u64,
        executable: bool,
        owner: Pubkey,
        rent_epoch: u64,
        space: u64,
        pubkey_first: bool,
    }

    impl Generated {
        /// The account in the exact layout of an RPC node.
        fn json(&self) -> String {
            let account = format!(
                r#"{{"data":["{}","base64"],"executable":{},"lamports":{},"owner":"{}","rentEpoch":{},"space":{}}}"#,
                BASE64.encode(&self.data),
                self.executable,
                self.lamports,
                self.owner,
                self.rent_epoch,
                self.space
            );
            if self.pubkey_first {
                format!(r#"{{"pubkey":"{}","account":{account}}}"#, self.key)
            } else {
                format!(r#"{{"account":{account},"pubkey":"{}"}}"#, self.key)
            }
        }
    }

    fn generated() -> impl Strategy<Value = Generated> {
        let edge_u64 = || prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..1000];
        (
            (any::<[u8; 32]>(), 0usize..4),
            proptest::collection::vec(any::<u8>(), 0..80),
            edge_u64(),
            any::<bool>(),
            prop_oneof![
                Just(Pubkey([0; 32])),
                Just(Pubkey([7; 32])),
                any::<[u8; 32]>().prop_map(Pubkey)
            ],
            edge_u64(),
            edge_u64(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    (mut key, zeros),
                    data,
                    lamports,
                    executable,
                    owner,
                    rent_epoch,
                    space,
                    pubkey_first,
                )| {
                    key[..zeros].fill(0);
                    Generated {
                        key: Pubkey(key),
                        data,
                        lamports,
                        executable,
                        owner,
                        rent_epoch,
                        space,
                        pubkey_first,
                    }
                },
            )
    }

    fn body(accounts: &[Generated]) -> String {
        let items: Vec<String> = accounts.iter().map(Generated::json).collect();
        format!(
            r#"{{"jsonrpc":"2.0","result":[{}],"id":1}}"#,
            items.join(",")
        )
    }

    /// A byte edit: replace, insert or delete, at a fraction of the body.
    #[derive(Clone, Debug)]
    enum Edit {
        Replace(f64, u8),
        Insert(f64, u8),
        Delete(f64),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        // Bytes that matter to the grammar and to the values.
        let byte = || {
            prop_oneof![
                proptest::sample::select(&b"\"\\,:{}[] \n0123456789.eE-+AZaz/=1tfnu"[..]),
                any::<u8>(),
            ]
        };
        let at = 0.0..1.0f64;
        prop_oneof![
            (at.clone(), byte()).prop_map(|(a, b)| Edit::Replace(a, b)),
            (at.clone(), byte()).prop_map(|(a, b)| Edit::Insert(a, b)),
            at.prop_map(Edit::Delete),
        ]
    }

    fn apply(body: &mut Vec<u8>, edit: &Edit) {
        let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len.saturating_sub(1));
        match *edit {
            Edit::Replace(f, b) if !body.is_empty() => {
                let i = at(f, body.len());
                body[i] = b;
            }
            Edit::Insert(f, b) => {
                let i = at(f, body.len() + 1);
                body.insert(i, b);
            }
            Edit::Delete(f) if !body.is_empty() => {
                let i = at(f, body.len());
                body.remove(i);
            }
            _ => {}
        }
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The exact-layout reader and the general one read every body
        /// alike: the same accounts, or the same error naming the same byte.
        #[test]
        fn exact_layout_reads_as_the_general_reader(
            accounts in proptest::collection::vec(generated(), 0..4),
            edits in proptest::collection::vec(edit(), 0..3),
        ) {
            let mut bytes = body(&accounts).into_bytes();
            for e in &edits {
                apply(&mut bytes, e);
            }
            prop_assert_eq!(read(&bytes, true), read(&bytes, false), "{}", String::from_utf8_lossy(&bytes));
        }

        /// Unedited bodies take the exact path and read back what was written.
        #[test]
        fn exact_layout_takes_the_node_layouts(accounts in proptest::collection::vec(generated(), 1..4)) {
            let text = body(&accounts);
            let expected: Vec<(Pubkey, Account)> = accounts
                .iter()
                .map(|a| {
                    (a.key, Account { lamports: a.lamports, owner: a.owner, data: a.data.clone(), executable: a.executable })
                })
                .collect();
            prop_assert_eq!(read(text.as_bytes(), true), (expected, Ok((Some(accounts.len()), None))));
            for a in &accounts {
                let json = a.json();
                let mut visit = |_: &Pubkey, _: AccountRef<'_>| {};
                let (mut data, mut owner) = (Vec::new(), None);
                let mut reader = AccountReader { visit: &mut visit, data: &mut data, owner: &mut owner, exact_layout: true };
                let mut s = Scanner::new(json.as_bytes());
                prop_assert!(reader.exact_keyed_account(&mut s).is_some(), "{}", json);
                prop_assert_eq!(s.pos, json.len());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn word_search_finds_the_first_quote_or_backslash(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![proptest::prelude::any::<u8>(), proptest::strategy::Just(b'"'), proptest::strategy::Just(b'\\')],
                0..40,
            )
        ) {
            proptest::prop_assert_eq!(
                find_quote_or_backslash(&bytes),
                bytes.iter().position(|&c| c == b'"' || c == b'\\')
            );
        }
    }

    #[test]
    fn numbers_and_literals_follow_the_grammar() {
        for (text, ok) in [
            ("0", true),
            ("-0.5e+10", true),
            ("18446744073709551615", true),
            ("1E3", true),
            ("01", false),
            ("-", false),
            ("1.", false),
            ("1e", false),
            (".5", false),
        ] {
            let mut s = Scanner::new(text.as_bytes());
            let read = s.skip_value(1).and_then(|()| s.end());
            assert_eq!(read.is_ok(), ok, "{text}");
        }
        assert_eq!(Scanner::new(b"18446744073709551615").u64(), Ok(u64::MAX));
        assert!(Scanner::new(b"18446744073709551616").u64().is_err());
        assert!(Scanner::new(b"-1").u64().is_err());
        assert!(Scanner::new(b"nul").skip_value(1).is_err());
    }
}
