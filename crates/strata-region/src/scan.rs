//! A fast path for the header's JSON: a scanner for the common case (no
//! escapes in strings, plain integers), several times quicker than the
//! general parser on headers of thousands of layers. It accepts only what
//! it fully understands and returns `None` for anything else (escapes,
//! unknown fields, malformed input), and the caller then parses with
//! `serde_json`, whose result (or error) stands. So the scanner can only be
//! faster, never more lenient: a differential test checks that whatever it
//! accepts, `serde_json` reads the same way.

use std::borrow::Cow;

use crate::format::{CowStr, RawHeader, RawMetadata, RawTensor, METADATA_KEY};

struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// `,` (then true) or `end` (then false).
    fn comma_or(&mut self, end: u8) -> Option<bool> {
        self.skip_whitespace();
        match self.bytes.get(self.at)? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            &b if b == end => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' => return None,
                b if b < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        let end = self.at;
        self.at += 1;
        // The whole header is valid UTF-8 and quotes are ASCII, so this
        // slice falls on character boundaries.
        Some(&self.text[start..end])
    }

    /// A non-negative integer as JSON writes it (no sign, no leading zero,
    /// no fraction or exponent), fitting in u64.
    fn integer(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.at) {
            return None;
        }
        Some(value)
    }

    fn integers(&mut self) -> Option<Vec<u64>> {
        self.expect(b'[')?;
        let mut values = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(values);
        }
        loop {
            values.push(self.integer()?);
            if !self.comma_or(b']')? {
                return Some(values);
            }
        }
    }

    fn tensor(&mut self) -> Option<RawTensor<'a>> {
        self.expect(b'{')?;
        let (mut dtype, mut shape, mut offsets) = (None, None, None);
        loop {
            match self.string()? {
                "dtype" if dtype.is_none() => {
                    self.expect(b':')?;
                    dtype = Some(self.string()?);
                }
                "shape" if shape.is_none() => {
                    self.expect(b':')?;
                    shape = Some(self.integers()?);
                }
                "data_offsets" if offsets.is_none() => {
                    self.expect(b':')?;
                    let pair = self.integers()?;
                    let [begin, end] = pair[..] else {
                        return None;
                    };
                    offsets = Some([begin, end]);
                }
                _ => return None,
            }
            if !self.comma_or(b'}')? {
                break;
            }
        }
        Some(RawTensor {
            dtype: Cow::Borrowed(dtype?),
            shape: shape?,
            data_offsets: offsets?,
        })
    }

    fn metadata(&mut self) -> Option<RawMetadata<'a>> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(RawMetadata(entries));
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.string()?;
            entries.push((CowStr(Cow::Borrowed(key)), CowStr(Cow::Borrowed(value))));
            if !self.comma_or(b'}')? {
                return Some(RawMetadata(entries));
            }
        }
    }
}

/// The header scanned on the fast path, or `None` to use the general
/// parser.
pub(crate) fn scan(json: &[u8]) -> Option<RawHeader<'_>> {
    let text = std::str::from_utf8(json).ok()?;
    let mut scanner = Scanner {
        bytes: json,
        text,
        at: 0,
    };
    scanner.expect(b'{')?;
    let mut header = RawHeader {
        metadata: None,
        metadata_twice: false,
        tensors: Vec::new(),
    };
    scanner.skip_whitespace();
    if scanner.bytes.get(scanner.at) == Some(&b'}') {
        scanner.at += 1;
    } else {
        loop {
            let key = scanner.string()?;
            scanner.expect(b':')?;
            if key == METADATA_KEY {
                header.metadata_twice |= header.metadata.is_some();
                header.metadata = Some(scanner.metadata()?);
            } else {
                header.tensors.push((Cow::Borrowed(key), scanner.tensor()?));
            }
            if !scanner.comma_or(b'}')? {
                break;
            }
        }
    }
    scanner.skip_whitespace();
    (scanner.at == json.len()).then_some(header)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Everything a header says, comparable.
    type Flat = (
        Option<Vec<(String, String)>>,
        bool,
        Vec<(String, String, Vec<u64>, [u64; 2])>,
    );

    fn flatten(raw: &RawHeader<'_>) -> Flat {
        (
            raw.metadata.as_ref().map(|m| {
                m.0.iter()
                    .map(|(k, v)| (k.0.to_string(), v.0.to_string()))
                    .collect()
            }),
            raw.metadata_twice,
            raw.tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.to_string(),
                        t.dtype.to_string(),
                        t.shape.clone(),
                        t.data_offsets,
                    )
                })
                .collect(),
        )
    }

    fn random_header(rng: &mut SmallRng) -> String {
        let ws = |rng: &mut SmallRng| [" ", "", "\n", "\t ", "\r\n"][rng.gen_range(0..5)];
        let mut json = String::from("{");
        let tensors = rng.gen_range(0..6);
        let mut parts = Vec::new();
        if rng.gen_bool(0.7) {
            let entries: Vec<String> = (0..rng.gen_range(0..4))
                .map(|n| format!("\"k{n}\":{}\"v{n}\"", ws(rng)))
                .collect();
            parts.push(format!("\"__metadata__\":{{{}}}", entries.join(",")));
        }
        for n in 0..tensors {
            let shape: Vec<String> = (0..rng.gen_range(0..3))
                .map(|_| rng.gen_range(0..50u64).to_string())
                .collect();
            let mut fields = [
                format!(
                    "\"dtype\":\"{}\"",
                    ["F32", "U8", "I64"][rng.gen_range(0..3)]
                ),
                format!("\"shape\":[{}]", shape.join(",")),
                format!(
                    "\"data_offsets\":[{},{}]",
                    rng.gen_range(0..100u64),
                    rng.gen_range(0..100u64)
                ),
            ];
            // Any field order.
            fields.swap(0, rng.gen_range(0..3));
            parts.push(format!(
                "\"t{n}\":{}{{{}}}",
                ws(rng),
                fields.join(&format!(",{}", ws(rng)))
            ));
        }
        json.push_str(&parts.join(","));
        json.push('}');
        json.push_str(ws(rng));
        json
    }

    #[test]
    fn whatever_the_scanner_accepts_serde_json_reads_the_same() {
        let seed = 42;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut accepted = 0;
        let alphabet = b"{}[]\":,0123456789 \\\tabdxyz-.e\x01\xc3";
        for round in 0..20_000 {
            let mut bytes = random_header(&mut rng).into_bytes();
            let valid = round % 2 == 0;
            if !valid {
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..bytes.len());
                    match rng.gen_range(0..3) {
                        0 => bytes[at] = alphabet[rng.gen_range(0..alphabet.len())],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
            }
            let fast = scan(&bytes);
            let slow: Result<RawHeader<'_>, _> = serde_json::from_slice(&bytes);
            match (&fast, &slow) {
                (Some(f), Ok(s)) => {
                    accepted += 1;
                    assert_eq!(flatten(f), flatten(s), "seed {seed} round {round}: {:?}", String::from_utf8_lossy(&bytes));
                }
                (Some(_), Err(e)) => panic!(
                    "seed {seed} round {round}: the scanner accepted what serde_json refuses ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
                (None, _) => {
                    // The general parser decides; a valid generated header
                    // must not need it.
                    assert!(!valid, "seed {seed} round {round}: a plain header fell back: {:?}", String::from_utf8_lossy(&bytes));
                }
            }
        }
        assert!(accepted >= 10_000, "only {accepted} accepted");
    }

    #[test]
    fn escapes_and_unusual_numbers_fall_back_to_the_general_parser() {
        for json in [
            r#"{"a\"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#,
            r#"{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}}"#,
            r#"{"__metadata__":{"k":1}}"#,
            r#"{} x"#,
        ] {
            assert!(scan(json.as_bytes()).is_none(), "{json}");
        }
        assert!(scan(
            br#" {"__metadata__":{},"a":{"data_offsets":[0,1],"shape":[1],"dtype":"U8"}}  "#
        )
        .is_some());
    }
}
