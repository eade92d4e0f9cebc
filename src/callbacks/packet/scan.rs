//! The message packet read without serde, for the packets OpenIM writes: a
//! flat object of strings, integers, `null`s and one list of strings.
//!
//! serde_json's derived reader spends about 12,000 instructions on a
//! 600-byte packet (a fifth of what a whole callback costs): every key and
//! value goes through a visitor, every optional field through `Option`, and
//! every string is scanned, then copied. This reads the same packet in a
//! single pass, with the key matched as bytes and each string copied once.
//!
//! It is a fast path, not a second parser to trust: it answers `Some` only
//! for a document it has read in full and understood, and `None` for
//! anything else (a syntax error, a wrong type, a duplicate key, an escaped
//! key, a lone surrogate, a nested value under an unknown key, …), which
//! then goes through serde_json as before, refusals and their messages
//! included. What it accepts, it must read exactly as serde_json does: the
//! tests compare the two on generated and mangled packets.

use super::MessagePacket;
use crate::callbacks::{ContentType, MsgFrom, MsgStatus, Platform, SessionType};
use crate::json_text::plain_run_end;

/// `text` as a message packet, or `None` when serde_json should decide.
pub(super) fn message(text: &str) -> Option<MessagePacket> {
    let mut scanner = Scanner { text, at: 0 };
    let mut packet = MessagePacket::default();
    // Bits of the fields read so far: a key twice is serde's "duplicate field".
    let mut seen = 0u32;
    scanner.skip_whitespace();
    scanner.expect(b'{')?;
    scanner.skip_whitespace();
    if scanner.peek() != Some(b'"') {
        return None; // `{}` lacks the required keys; anything else is not an object
    }
    loop {
        scanner.expect(b'"')?;
        let key = scanner.key()?;
        scanner.skip_whitespace();
        scanner.expect(b':')?;
        scanner.skip_whitespace();
        let field = field_of(key);
        if let Some(bit) = field.map(|field| 1u32 << field as u32) {
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        match field {
            Some(Field::SendId) => packet.send_id = scanner.string()?,
            Some(Field::CallbackCommand) => packet.callback_command = scanner.string_or_null()?,
            Some(Field::ServerMsgId) => packet.server_msg_id = scanner.string_or_null()?,
            Some(Field::ClientMsgId) => packet.client_msg_id = scanner.string_or_null()?,
            Some(Field::OperationId) => packet.operation_id = scanner.string_or_null()?,
            Some(Field::SenderPlatformId) => packet.sender_platform_id = Platform(scanner.i32_or_null()?),
            Some(Field::SenderNickname) => packet.sender_nickname = scanner.string_or_null()?,
            Some(Field::SessionType) => packet.session_type = SessionType(scanner.i32_or_null()?),
            Some(Field::MsgFrom) => packet.msg_from = MsgFrom(scanner.i32_or_null()?),
            Some(Field::ContentType) => packet.content_type = ContentType(scanner.i32()?),
            Some(Field::Status) => packet.status = MsgStatus(scanner.i32_or_null()?),
            Some(Field::SendTime) => packet.send_time = scanner.i64_or_null()?,
            Some(Field::CreateTime) => packet.create_time = scanner.i64_or_null()?,
            Some(Field::Content) => packet.content = scanner.string_or_null()?,
            Some(Field::Seq) => packet.seq = scanner.u32_or_null()?,
            Some(Field::AtUserList) => packet.at_user_list = scanner.strings_or_null()?,
            Some(Field::FaceUrl) => packet.face_url = scanner.string_or_null()?,
            Some(Field::Ex) => packet.ex = scanner.string_or_null()?,
            Some(Field::RecvId) => packet.recv_id = scanner.string_or_null()?,
            Some(Field::GroupId) => packet.group_id = scanner.string_or_null()?,
            None => scanner.skip_scalar()?,
        }
        scanner.skip_whitespace();
        match scanner.next()? {
            b',' => scanner.skip_whitespace(),
            b'}' => break,
            _ => return None,
        }
    }
    scanner.skip_whitespace();
    let required = 1 << Field::SendId as u32 | 1 << Field::ContentType as u32;
    (scanner.at == text.len() && seen & required == required).then_some(packet)
}

/// The packet's keys, as OpenIM spells them (`MessagePacket`'s serde names).
#[derive(Clone, Copy)]
enum Field {
    SendId,
    CallbackCommand,
    ServerMsgId,
    ClientMsgId,
    OperationId,
    SenderPlatformId,
    SenderNickname,
    SessionType,
    MsgFrom,
    ContentType,
    Status,
    SendTime,
    CreateTime,
    Content,
    Seq,
    AtUserList,
    FaceUrl,
    Ex,
    RecvId,
    GroupId,
}

fn field_of(key: &[u8]) -> Option<Field> {
    Some(match key {
        b"sendID" => Field::SendId,
        b"callbackCommand" => Field::CallbackCommand,
        b"serverMsgID" => Field::ServerMsgId,
        b"clientMsgID" => Field::ClientMsgId,
        b"operationID" => Field::OperationId,
        b"senderPlatformID" => Field::SenderPlatformId,
        b"senderNickname" => Field::SenderNickname,
        b"sessionType" => Field::SessionType,
        b"msgFrom" => Field::MsgFrom,
        b"contentType" => Field::ContentType,
        b"status" => Field::Status,
        b"sendTime" => Field::SendTime,
        b"createTime" => Field::CreateTime,
        b"content" => Field::Content,
        b"seq" => Field::Seq,
        b"atUserList" => Field::AtUserList,
        b"faceURL" => Field::FaceUrl,
        b"ex" => Field::Ex,
        b"recvID" => Field::RecvId,
        b"groupID" => Field::GroupId,
        _ => return None,
    })
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    /// JSON's whitespace: space, tab, newline, carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A key, after its opening quote; one with an escape is left to serde.
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        let end = plain_run_end(self.bytes(), start);
        (self.bytes().get(end) == Some(&b'"')).then(|| {
            self.at = end + 1;
            &self.bytes()[start..end]
        })
    }

    /// `null` (read as "") or a string.
    fn string_or_null(&mut self) -> Option<String> {
        self.or_null(Self::string)
    }

    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let start = self.at;
        let end = plain_run_end(self.bytes(), start);
        // Both ends are ASCII bytes, so `get` finds character boundaries there.
        let plain = self.text.get(start..end)?;
        self.at = end + 1;
        match self.bytes().get(end)? {
            b'"' => Some(plain.to_owned()),
            b'\\' => self.rest_of_escaped(plain),
            _ => None, // a control character: serde's error
        }
    }

    /// The rest of a string whose plain start is `plain` and whose first
    /// backslash was just read: escapes, and the plain runs between them.
    fn rest_of_escaped(&mut self, plain: &str) -> Option<String> {
        let bytes = self.bytes();
        let mut value = Vec::with_capacity(plain.len() + 64);
        value.extend_from_slice(plain.as_bytes());
        let mut at = self.at;
        loop {
            // At an escape's letter.
            let letter = *bytes.get(at)?;
            at += 1;
            match letter {
                b'"' | b'\\' | b'/' => value.push(letter),
                b'b' => value.push(0x08),
                b'f' => value.push(0x0c),
                b'n' => value.push(b'\n'),
                b'r' => value.push(b'\r'),
                b't' => value.push(b'\t'),
                // Surrogates (pairs included) are rare from Go, which writes
                // text as UTF-8: serde_json reads them.
                b'u' => {
                    let code = char::from_u32(hex4(bytes.get(at..at + 4)?)?)?;
                    at += 4;
                    value.extend_from_slice(code.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => return None,
            }
            let end = plain_run_end(bytes, at);
            value.extend_from_slice(&bytes[at..end]);
            at = end + 1;
            match *bytes.get(end)? {
                b'"' => {
                    self.at = at;
                    // Whole UTF-8 sequences of the text and whole
                    // characters were copied: this check cannot fail.
                    return String::from_utf8(value).ok();
                }
                b'\\' => {}
                _ => return None, // a control character: serde's error
            }
        }
    }
    fn strings_or_null(&mut self) -> Option<Vec<String>> {
        self.or_null(Self::strings)
    }

    /// A list of strings.
    fn strings(&mut self) -> Option<Vec<String>> {
        self.expect(b'[')?;
        let mut strings = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(strings);
        }
        loop {
            self.skip_whitespace();
            strings.push(self.string()?);
            self.skip_whitespace();
            match self.next()? {
                b',' => {}
                b']' => return Some(strings),
                _ => return None,
            }
        }
    }

    /// An integer as JSON writes one: no fraction or exponent (serde refuses
    /// those for an integer field), no leading zero, within an i64; and not
    /// `-0`, which serde_json reads as a float (to keep its sign).
    fn integer(&mut self) -> Option<i64> {
        // On a local index, which the loop keeps in a register.
        let bytes = self.bytes();
        let negative = bytes.get(self.at) == Some(&b'-');
        let start = self.at + usize::from(negative);
        let mut at = start;
        // Nineteen digits cannot overflow a u64; more cannot fit an i64.
        let mut magnitude: u64 = 0;
        while let Some(digit) = bytes.get(at).map(|byte| byte.wrapping_sub(b'0')).filter(|digit| *digit <= 9)
        {
            magnitude = magnitude.wrapping_mul(10).wrapping_add(u64::from(digit));
            at += 1;
        }
        self.at = at;
        let digits = at - start;
        let leading_zero = digits > 1 && bytes[start] == b'0';
        let fraction_follows = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        if digits == 0 || digits > 19 || leading_zero || fraction_follows || (negative && magnitude == 0) {
            return None;
        }
        if negative { 0i64.checked_sub_unsigned(magnitude) } else { i64::try_from(magnitude).ok() }
    }

    fn i32(&mut self) -> Option<i32> {
        i32::try_from(self.integer()?).ok()
    }

    /// `null` (read as the type's default, as serde's `null_as_default`) or what `read` reads.
    fn or_null<T: Default>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        if self.peek() == Some(b'n') {
            return self.literal(b"null").map(|()| T::default());
        }
        read(self)
    }

    fn i32_or_null(&mut self) -> Option<i32> {
        self.or_null(Self::i32)
    }

    fn i64_or_null(&mut self) -> Option<i64> {
        self.or_null(Self::integer)
    }

    fn u32_or_null(&mut self) -> Option<u32> {
        self.or_null(|scanner| u32::try_from(scanner.integer()?).ok())
    }

    /// The value of a key the packet does not have: a string, a number,
    /// `true`, `false` or `null`, checked and dropped. An object or a list
    /// there is left to serde.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Any JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// Four hex digits of a `\u` escape.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0, |code, &digit| Some(code * 16 + char::from(digit).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde_json makes of `text`, the reading the fast path must match.
    fn by_serde(text: &str) -> Option<MessagePacket> {
        serde_json::from_str(text).ok()
    }

    /// The property every input must have: where the fast path answers, it
    /// answers what serde_json does.
    fn agrees_with_serde(text: &str) -> Result<(), TestCaseError> {
        if let Some(packet) = message(text) {
            prop_assert_eq!(Some(packet), by_serde(text), "the fast path misread {:?}", text);
        }
        Ok(())
    }

    /// Characters that test every branch of string reading: quotes,
    /// backslashes, control characters, what Go escapes, and text of 2, 3
    /// and 4 UTF-8 bytes.
    fn text() -> impl Strategy<Value = String> {
        let characters = prop::sample::select(vec![
            'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}',
            '\u{7f}', '<', '>', '&', 'é', '你', '😀', '\u{2028}',
        ]);
        prop::collection::vec(characters, 0..24).prop_map(String::from_iter)
    }

    prop_compose! {
        fn packet()(
            strings in prop::collection::vec(text(), 12),
            codes in prop::collection::vec(any::<i32>(), 5),
            times in prop::collection::vec(any::<i64>(), 2),
            seq in any::<u32>(),
            at_user_list in prop::collection::vec(text(), 0..3),
        ) -> MessagePacket {
            MessagePacket {
                send_id: strings[0].clone(),
                callback_command: strings[1].clone(),
                server_msg_id: strings[2].clone(),
                client_msg_id: strings[3].clone(),
                operation_id: strings[4].clone(),
                sender_platform_id: Platform(codes[0]),
                sender_nickname: strings[5].clone(),
                session_type: SessionType(codes[1]),
                msg_from: MsgFrom(codes[2]),
                content_type: ContentType(codes[3]),
                status: MsgStatus(codes[4]),
                send_time: times[0],
                create_time: times[1],
                content: strings[6].clone(),
                seq,
                at_user_list,
                face_url: strings[7].clone(),
                ex: strings[8].clone(),
                recv_id: strings[9].clone(),
                group_id: strings[10].clone(),
            }
        }
    }

    /// `json` with `<`, `>` and `&` written as `\u003c`… the way Go's encoder writes them.
    fn go_escaped(json: &str) -> String {
        json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
    }

    /// One key and value of a hand-made document, right or wrong.
    fn member() -> impl Strategy<Value = String> {
        let keys = prop::sample::select(vec![
            "sendID",
            "callbackCommand",
            "serverMsgID",
            "clientMsgID",
            "operationID",
            "senderPlatformID",
            "senderNickname",
            "sessionType",
            "msgFrom",
            "contentType",
            "status",
            "sendTime",
            "createTime",
            "content",
            "seq",
            "atUserList",
            "faceURL",
            "ex",
            "recvID",
            "groupID",
            "newKey",
            "sendid",
            "send\\u0049D",
            "ex\"",
        ]);
        let values = prop_oneof![
            text().prop_map(|text| serde_json::to_string(&text).unwrap()),
            text().prop_map(|text| go_escaped(&serde_json::to_string(&text).unwrap())),
            any::<i64>().prop_map(|number| number.to_string()),
            any::<i32>().prop_map(|number| number.to_string()),
            (0u8..200).prop_map(|number| number.to_string()),
            prop::sample::select(vec![
                "null",
                "true",
                "false",
                "-0",
                "01",
                "1.5",
                "1e3",
                "-",
                "18446744073709551616",
                "[]",
                "[\"a\",\"b\"]",
                "[\"a\",null]",
                "[1]",
                "{}",
                "{\"a\":[1]}",
                "\"\\ud83d\\ude00\"",
                "\"\\ud83d\"",
                "\"\\u00e9\"",
                "\"\\x\"",
                "\"\\u12\"",
                "nul",
                "\"unterminated",
            ])
            .prop_map(str::to_owned),
        ];
        (keys, values).prop_map(|(key, value)| format!("\"{key}\":{value}"))
    }

    /// Whitespace JSON allows between tokens, and some it does not.
    fn gap() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n", "\u{a0}"])
    }

    fn document() -> impl Strategy<Value = String> {
        let required =
            prop::sample::select(vec![r#""sendID":"a""#, r#""contentType":101"#, r#""recvID":"b""#]);
        (prop::collection::vec(prop_oneof![required.prop_map(str::to_owned), member()], 0..12), gap(), gap())
            .prop_map(|(members, before, after)| {
                format!("{before}{{{}}}{after}", members.join(&format!("{after},{before}")))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_packet_serde_writes_is_read_back_by_the_fast_path(packet in packet(), pretty: bool, go: bool) {
            let json = if pretty {
                serde_json::to_string_pretty(&packet).unwrap()
            } else {
                serde_json::to_string(&packet).unwrap()
            };
            let json = if go { go_escaped(&json) } else { json };
            // Emoji in `\u` escapes would be surrogate pairs, left to serde: Go writes UTF-8.
            prop_assert_eq!(message(&json), Some(packet), "{}", json);
        }

        #[test]
        fn hand_made_documents_are_read_as_serde_reads_them_or_left_to_it(document in document()) {
            agrees_with_serde(&document)?;
        }

        #[test]
        fn mangled_packets_are_read_as_serde_reads_them_or_left_to_it(
            packet in packet(),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), 0usize..4, prop::sample::select(vec![
                "", "\"", "\\", ",", ":", "}", "{", "[", "]", "0", "-", ".", "e", "n", " ", "\u{1}", "\u{1f}", "é",
            ])), 1..4),
        ) {
            let mut json = serde_json::to_string(&packet).unwrap();
            for (place, length, insert) in cuts {
                let start = place.index(json.len() + 1);
                let end = (start + length).min(json.len());
                if json.is_char_boundary(start) && json.is_char_boundary(end) {
                    json.replace_range(start..end, insert);
                }
            }
            agrees_with_serde(&json)?;
        }
    }

    #[test]
    fn the_samples_take_the_fast_path() {
        for sample in ["text", "group", "picture", "saved-to-database", "rest-api-v3.0"] {
            let path = format!("{}/samples/{sample}.json", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let packet = message(&text);
            assert!(packet.is_some(), "{sample}.json was left to serde");
            assert_eq!(packet, by_serde(&text), "{sample}.json");
        }
    }

    #[test]
    fn every_escape_json_has_is_read_by_the_fast_path() {
        // As other encoders write them too: PHP's escapes `/`, some escape all non-ASCII.
        let text = r#"{"sendID":"a","contentType":101,"ex":"\" \\ \/ \b \f \n \r \t \u00e9 \u4f60 \u0000"}"#;
        let packet = message(text).expect("the fast path reads every escape");
        assert_eq!(packet.ex, "\" \\ / \u{8} \u{c} \n \r \t é 你 \u{0}");
        assert_eq!(Some(packet), by_serde(text));
    }

    #[test]
    fn integers_at_the_edges_of_their_types_are_read_as_serde_reads_them() {
        let numbers = [
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "-9223372036854775809",
            "9999999999999999999",
            "10000000000000000000",
            "2147483647",
            "-2147483648",
            "2147483648",
            "4294967295",
            "4294967296",
            "0",
            "7",
        ];
        for number in numbers {
            for key in ["sendTime", "contentType", "seq"] {
                let other = if key == "contentType" { "" } else { r#","contentType":1"# };
                let text = format!(r#"{{"sendID":"a"{other},"{key}":{number}}}"#);
                let expected = by_serde(&text);
                let read = message(&text);
                assert!(read.is_none() || read == expected, "{text}: {read:?} against {expected:?}");
                if expected.is_some() {
                    assert_eq!(read, expected, "{text} is left to serde");
                }
            }
        }
    }

    #[test]
    fn what_serde_must_decide_is_left_to_it() {
        let minimal = |extra: &str| format!(r#"{{"sendID":"a","contentType":101{extra}}}"#);
        assert!(message(&minimal("")).is_some());
        for extra in [
            r#","sendID":"b""#,            // a duplicate field: serde refuses it
            r#","seq":-1"#,                // out of a u32's range
            r#","seq":1.0"#,               // a float for an integer
            r#","contentType":null"#,      // a duplicate, and a required field as null
            r#","send\u0049D":"b""#,       // an escaped key (serde unescapes it: a duplicate)
            r#","newKey":{"nested":[1]}"#, // a nested value under an unknown key
            r#","ex":"\ud83d\ude00""#,     // a surrogate pair
            ",\"ex\":\"\u{1}\"",           // a raw control character
        ] {
            assert_eq!(message(&minimal(extra)), None, "{extra}");
        }
        // A raw control character anywhere in a string, in the eight-byte
        // steps of the search and in the bytes after the last whole step.
        for control in (0..0x20u8).map(char::from) {
            for padding in 0..16 {
                let extra = format!(r#","ex":"{}{control}""#, "x".repeat(padding));
                assert_eq!(message(&minimal(&extra)), None, "{extra:?}");
            }
        }
        assert_eq!(message(r#"{"sendID":"a"}"#), None, "contentType is required");
        assert_eq!(message(&format!("{} {{}}", minimal(""))), None, "trailing JSON");
    }
}
