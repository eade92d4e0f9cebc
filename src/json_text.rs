//! JSON strings byte by byte, for the two places that read and write them by
//! hand: the packet's fast path (`callbacks/packet/scan.rs`) and the log
//! records (`sinks/log.rs`). The bytes a JSON string cannot hold as they are
//! are `"`, `\` and the control characters; every other byte, UTF-8 included,
//! is copied whole, so both look for those three eight bytes at a time.

/// Eight bytes each holding `byte`.
const fn repeated(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// A word with the high bit set in each byte of `word` that is below `limit`
/// (at most 0x80); flags above the first true one may be false, the first is exact.
const fn bytes_below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(repeated(limit)) & !word & repeated(0x80)
}

/// Where in `bytes`, from `from`, the first `"`, `\` or control character is
/// (`bytes.len()` when there is none): the end of a plain run, which a JSON
/// string holds as it is.
pub fn plain_run_end(bytes: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk);
        let special = bytes_below(word ^ repeated(b'"'), 1)
            | bytes_below(word ^ repeated(b'\\'), 1)
            | bytes_below(word, 0x20);
        if special != 0 {
            return at + (special.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&byte) = bytes.get(at) {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// `value` as a JSON string appended to `out`, byte for byte as serde_json
/// writes it: `\"`, `\\`, the short escapes `\b \f \n \r \t`, `\u00XX`
/// (lowercase) for the other control characters, everything else as it is.
pub fn write_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut at = 0;
    loop {
        let end = plain_run_end(bytes, at);
        out.extend_from_slice(&bytes[at..end]);
        let Some(&special) = bytes.get(end) else { break };
        match special {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(control >> 4)]);
                out.push(HEX[usize::from(control & 0xf)]);
            }
        }
        at = end + 1;
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(value in "(?s).{0,40}", control in 0u8..0x20) {
            for value in [value.clone(), format!("{value}{}", char::from(control)), format!("\"{value}\\")] {
                let mut ours = Vec::new();
                write_string(&mut ours, &value);
                prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&value).unwrap());
            }
        }
    }

    #[test]
    fn the_strings_of_a_log_record_are_written_as_serde_json_writes_them() {
        let long = "x".repeat(40);
        let cases = [
            "",
            "plain",
            "3861937549",
            "héllo 你好 😀",
            "a\"quote",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "\u{1f}unit",
            "del\u{7f}",
            "<script>&amp;",
            "\u{2028}line sep",
            "\u{8}\u{c}\r",
        ];
        for case in
            cases.iter().map(|case| case.to_string()).chain([format!("{long}\""), format!("{long}\n{long}")])
        {
            let mut ours = Vec::new();
            write_string(&mut ours, &case);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&case).unwrap(), "{case:?}");
        }
    }

    #[test]
    fn a_plain_run_ends_at_the_first_byte_a_json_string_escapes() {
        for length in 0..20 {
            let plain = "é".repeat(length / 2) + &"x".repeat(length % 2);
            assert_eq!(plain_run_end(plain.as_bytes(), 0), plain.len());
            for special in ["\"", "\\", "\u{0}", "\u{1f}", "\n"] {
                let text = format!("{plain}{special}{plain}\"");
                assert_eq!(plain_run_end(text.as_bytes(), 0), plain.len(), "{text:?}");
            }
        }
        assert_eq!(plain_run_end(b"ab\"cd", 3), 5, "from a given place");
    }
}
