//! JSON strings byte by byte, for the two places that read and write them by
//! hand: the packet's fast path (`callbacks/packet/scan.rs`) and the log
//! records (`sinks/log.rs`). The bytes a JSON string cannot hold as they are
//! are `"`, `\` and the control characters; every other byte, UTF-8 included,
//! is copied whole, so both look for those three sixteen bytes at a time.

/// Where in `bytes`, from `from`, the first `"`, `\` or control character is
/// (`bytes.len()` when there is none): the end of a plain run, which a JSON
/// string holds as it is. Sixteen bytes at a time with SSE2, which every
/// x86_64 processor has; eight at a time in a word elsewhere.
pub fn plain_run_end(bytes: &[u8], from: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return sse2::plain_run_end(bytes, from);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    return words::plain_run_end(bytes, from);
}

/// Sixteen bytes compared at once. `safe_arch` wraps the intrinsics (the
/// crate forbids unsafe code); each is one instruction.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, m128i, min_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };

    pub fn plain_run_end(bytes: &[u8], from: usize) -> usize {
        let mut at = from;
        while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            let special = special_bytes(load_unaligned_m128i(chunk));
            if special != 0 {
                return at + special.trailing_zeros() as usize;
            }
            at += 16;
        }
        // Fewer than sixteen left: the last sixteen bytes again, without the
        // bits of those already looked at; a short text a word at a time.
        if at >= bytes.len() {
            return at;
        }
        let Some(last) = bytes.last_chunk::<16>() else {
            return super::words::plain_run_end(bytes, at);
        };
        let looked_at = at - (bytes.len() - 16);
        let special = special_bytes(load_unaligned_m128i(last)) >> looked_at;
        if special != 0 { at + special.trailing_zeros() as usize } else { bytes.len() }
    }

    /// A bit for each of the sixteen bytes that is `"`, `\` or below 0x20.
    fn special_bytes(chunk: m128i) -> u32 {
        let quote = cmp_eq_mask_i8_m128i(chunk, set_splat_i8_m128i(b'"' as i8));
        let backslash = cmp_eq_mask_i8_m128i(chunk, set_splat_i8_m128i(b'\\' as i8));
        // Below 0x20 exactly when the unsigned minimum with 0x1f is the byte itself.
        let control = cmp_eq_mask_i8_m128i(min_u8_m128i(chunk, set_splat_i8_m128i(0x1f)), chunk);
        move_mask_i8_m128i(bitor_m128i(bitor_m128i(quote, backslash), control)) as u32
    }
}

/// Eight bytes compared at once in a word, for processors without SSE2
/// (and, in the tests, beside it).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2", not(test)), allow(dead_code))]
mod words {
    /// Eight bytes each holding `byte`.
    const fn repeated(byte: u8) -> u64 {
        u64::from_ne_bytes([byte; 8])
    }

    /// A word with the high bit set in each byte of `word` that is below `limit`
    /// (at most 0x80); flags above the first true one may be false, the first is exact.
    const fn bytes_below(word: u64, limit: u8) -> u64 {
        word.wrapping_sub(repeated(limit)) & !word & repeated(0x80)
    }

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
}

/// `value` as a JSON string appended to `out`, byte for byte as serde_json
/// writes it: `\"`, `\\`, the short escapes `\b \f \n \r \t`, `\u00XX`
/// (lowercase) for the other control characters, everything else as it is.
pub fn write_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most values need no escape: copied first, then looked at where they
    // landed, at the end of a buffer that is (past a record's first bytes)
    // longer than sixteen, so a short value is one look at its last sixteen.
    let start = out.len();
    out.extend_from_slice(bytes);
    let mut at = plain_run_end(out, start) - start;
    if at < bytes.len() {
        out.truncate(start + at);
        loop {
            match bytes[at] {
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
            let end = plain_run_end(bytes, at + 1);
            out.extend_from_slice(&bytes[at + 1..end]);
            if end == bytes.len() {
                break;
            }
            at = end;
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(
            value in "(?s).{0,40}",
            control in 0u8..0x20,
            // What the buffer already holds (a record's earlier fields, quotes
            // and backslashes among them): the value is looked at where it lands.
            before in "[a-z\"\\\\:,{]{0,24}",
        ) {
            for value in [value.clone(), format!("{value}{}", char::from(control)), format!("\"{value}\\")] {
                let mut ours = before.clone().into_bytes();
                write_string(&mut ours, &value);
                prop_assert_eq!(String::from_utf8(ours).unwrap(), before.clone() + &serde_json::to_string(&value).unwrap());
            }
        }
    }

    /// Bytes from an alphabet of the ones that end a run, the ones either
    /// side of them, and UTF-8, at lengths around the sixteen- and
    /// eight-byte steps.
    fn bytes_near_the_edges() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop::sample::select(vec![
            b'"', b'\\', 0x00, 0x1f, 0x20, b'!', b'#', b'[', b']', b'a', 0x7f, 0x80, 0xc3, 0xff,
        ]);
        prop::collection::vec(byte, 0..70)
    }

    proptest! {
        #[test]
        fn both_ways_of_finding_a_run_end_find_the_first_byte_a_string_escapes(
            bytes in bytes_near_the_edges(),
            from in 0usize..80,
        ) {
            let from = from.min(bytes.len());
            let expected = bytes[from..]
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
                .map_or(bytes.len(), |offset| from + offset);
            prop_assert_eq!(plain_run_end(&bytes, from), expected);
            prop_assert_eq!(words::plain_run_end(&bytes, from), expected);
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
