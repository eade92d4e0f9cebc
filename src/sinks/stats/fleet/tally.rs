//! One batch's counts, summed before they go to Redis: a batch of a thousand
//! messages is one script call with a few dozen increments, not thousands.

use super::{DISTINCT, FleetKeys};
use crate::callbacks::{ContentType, MsgFrom, MsgStatus, Platform, ReceivedMessage, SessionType};
use crate::sinks::stats::HashesSet;
use crate::sinks::stats::contribution::{Contribution, Identities, Sent};
use crate::sinks::stats::daily::{Calendar, MS_PER_DAY, MS_PER_MINUTE, RATE_MINUTES};
use std::collections::{BTreeMap, HashMap};

/// Applies a batch and moves the replica's position, only if the position in
/// Redis is the one the replica expects; else changes nothing and answers
/// what is there. KEYS[1]: positions, KEYS[2]: replicas; ARGV[1]: replica,
/// ARGV[2]: expected position ('' for none), ARGV[3]: new position, ARGV[4]:
/// now (ms), then operations, each naming its key by index into KEYS.
pub const SCRIPT: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return {0, current} end
-- Redis does not undo a script's writes when a later command fails: check
-- first that every key has the type its commands need, then write.
local wanted = {H = 'hash', L = 'hash', G = 'hash', P = 'string', C = 'string'}
local seen = {}
local function check(key, kind)
  if seen[key] then return nil end
  seen[key] = true
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('fleet key ' .. key .. ' is a ' .. found .. ', not a ' .. kind .. ': nothing of this batch was applied')
  end
end
local refused = check(KEYS[1], 'hash') or check(KEYS[2], 'zset')
if refused then return refused end
local i = 5
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'E' then
    i = i + 3
  elseif wanted[op] == nil then
    return redis.error_reply('unknown operation ' .. op)
  else
    refused = check(key, wanted[op])
    if refused then return refused end
    if op == 'P' then i = i + 3 + tonumber(ARGV[i + 2]) elseif op == 'C' then i = i + 3 else i = i + 4 end
  end
end
i = 5
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'H' then
    redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'L' or op == 'G' then
    local old = tonumber(redis.call('HGET', key, ARGV[i + 2]))
    local new = tonumber(ARGV[i + 3])
    if old == nil or (op == 'L' and new < old) or (op == 'G' and new > old) then
      redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'P' then
    local n = tonumber(ARGV[i + 2])
    redis.call('PFADD', key, unpack(ARGV, i + 3, i + 2 + n))
    i = i + 3 + n
  elseif op == 'C' then
    redis.call('INCRBY', key, ARGV[i + 2])
    i = i + 3
  elseif op == 'E' then
    redis.call('EXPIREAT', key, ARGV[i + 2])
    i = i + 3
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {1, ARGV[3]}
"#;

/// Elements per `PFADD` (Lua's `unpack` has a stack limit).
const PFADD_CHUNK: usize = 1000;

/// A counted hash field; named (`content_type:text`) only once per batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Messages,
    OutOfWindow,
    SavedToDatabase,
    Revoked,
    ContentType(ContentType),
    Platform(Platform),
    MsgFrom(MsgFrom),
    SessionType(SessionType),
    Status(MsgStatus),
}

impl Field {
    fn name(self) -> String {
        match self {
            Field::Messages => "messages".into(),
            Field::OutOfWindow => "out_of_window".into(),
            Field::SavedToDatabase => "saved_to_database".into(),
            Field::Revoked => "revoked".into(),
            Field::ContentType(code) => format!("content_type:{}", code.label()),
            Field::Platform(code) => format!("platform:{}", code.label()),
            Field::MsgFrom(code) => format!("msg_from:{}", code.label()),
            Field::SessionType(code) => format!("session_type:{}", code.label()),
            Field::Status(code) => format!("status:{}", code.label()),
        }
    }
}

#[derive(Default)]
struct Counts {
    fields: HashMap<Field, i64, foldhash::fast::RandomState>,
    distinct: [HashesSet; DISTINCT.len()],
}

impl Counts {
    fn add(&mut self, field: Field) {
        *self.fields.entry(field).or_default() += 1;
    }

    /// Fields by name, sorted (a stable order for tests and for Redis's sake).
    fn named(&self) -> BTreeMap<String, i64> {
        self.fields.iter().map(|(field, count)| (field.name(), *count)).collect()
    }

    /// Into each distinct count, in [`DISTINCT`]'s order: senders,
    /// receivers, people (either role), conversations, groups.
    fn add_identities(&mut self, who: &Identities) {
        let people = [who.sender, who.receiver.unwrap_or_default()];
        let people = &people[..1 + usize::from(who.receiver.is_some())];
        let items: [&[u64]; DISTINCT.len()] = [
            std::slice::from_ref(&who.sender),
            who.receiver.as_slice(),
            people,
            std::slice::from_ref(&who.conversation),
            who.group.as_slice(),
        ];
        for (set, items) in self.distinct.iter_mut().zip(items) {
            set.extend(items);
        }
    }
}

/// A batch's counts.
#[derive(Default)]
pub struct Tally {
    totals: Counts,
    days: BTreeMap<i64, Counts>,
    minutes: BTreeMap<i64, i64>,
    create_time: Option<(i64, i64)>,
}

impl Tally {
    /// Counts one callback as [`Contribution`] says (as the memory backend does).
    pub fn record_callback(&mut self, message: &ReceivedMessage, calendar: &Calendar) {
        match Contribution::of(message, calendar) {
            Some(Contribution::Sent(sent)) => self.record_sent(&sent),
            Some(Contribution::SavedToDatabase) => self.totals.add(Field::SavedToDatabase),
            Some(Contribution::Revoked) => self.totals.add(Field::Revoked),
            None => {}
        }
    }

    fn record_sent(&mut self, sent: &Sent<'_>) {
        let packet = sent.packet;
        let totals = &mut self.totals;
        totals.add(Field::Messages);
        totals.add(Field::ContentType(packet.content_type));
        totals.add(Field::Platform(packet.sender_platform_id));
        totals.add(Field::MsgFrom(packet.msg_from));
        totals.add(Field::SessionType(packet.session_type));
        totals.add(Field::Status(packet.status));
        totals.add_identities(&sent.who);
        match sent.day {
            None => totals.add(Field::OutOfWindow),
            Some(day) => {
                let counts = self.days.entry(day).or_default();
                counts.add(Field::Messages);
                counts.add(Field::ContentType(packet.content_type));
                counts.add_identities(&sent.who);
            }
        }
        *self.minutes.entry(sent.received_ms.div_euclid(MS_PER_MINUTE)).or_default() += 1;
        crate::sinks::stats::contribution::widen(&mut self.create_time, packet.create_time);
    }

    /// The script's keys and its operations (ARGV from the fifth on).
    pub fn into_call(self, keys: &FleetKeys, calendar: &Calendar) -> ScriptCall {
        let mut call = ScriptCall::default();
        let totals = keys.totals();
        for (field, count) in &self.totals.named() {
            call.hincrby(&totals, field, *count);
        }
        if let Some((earliest, latest)) = self.create_time {
            call.keep("L", &totals, "earliest_create_time", earliest);
            call.keep("G", &totals, "latest_create_time", latest);
        }
        for (what, set) in DISTINCT.iter().zip(&self.totals.distinct) {
            call.pfadd(&keys.distinct(what), set);
        }
        for (day, counts) in &self.days {
            // The day leaves the window at its own midnight `retention_days` later.
            let expires_ms = (day + i64::from(calendar.retention_days)) * MS_PER_DAY
                - i64::from(calendar.offset_minutes) * MS_PER_MINUTE;
            let day_key = keys.day(*day);
            for (field, count) in &counts.named() {
                call.hincrby(&day_key, field, *count);
            }
            call.expire_at(&day_key, expires_ms / 1000);
            for (what, set) in DISTINCT.iter().zip(&counts.distinct) {
                let key = keys.day_distinct(*day, what);
                call.pfadd(&key, set);
                call.expire_at(&key, expires_ms / 1000);
            }
        }
        for (minute, count) in &self.minutes {
            let key = keys.minute(*minute);
            call.op("C", &key, &[count.to_string().into_bytes()]);
            // Read for an hour; kept a second hour for replicas whose clocks differ.
            call.expire_at(&key, (minute + 2 * RATE_MINUTES + 1) * 60);
        }
        call
    }
}

/// Keys and operations for [`SCRIPT`].
#[derive(Default)]
pub struct ScriptCall {
    pub keys: Vec<String>,
    index: HashMap<String, usize>,
    pub args: Vec<Vec<u8>>,
}

impl ScriptCall {
    fn op(&mut self, op: &str, key: &str, operands: &[Vec<u8>]) {
        let next = self.index.len();
        // KEYS[1] and KEYS[2] are the positions and replicas: operations' keys start at 3.
        let index = *self.index.entry(key.to_owned()).or_insert_with(|| {
            self.keys.push(key.to_owned());
            next + 3
        });
        self.args.push(op.as_bytes().to_vec());
        self.args.push(index.to_string().into_bytes());
        self.args.extend(operands.iter().cloned());
    }

    fn hincrby(&mut self, key: &str, field: &str, count: i64) {
        self.op("H", key, &[field.as_bytes().to_vec(), count.to_string().into_bytes()]);
    }

    /// Keeps the lowest ("L") or greatest ("G") value of a hash field.
    fn keep(&mut self, which: &str, key: &str, field: &str, value: i64) {
        self.op(which, key, &[field.as_bytes().to_vec(), value.to_string().into_bytes()]);
    }

    /// Items are the 8 bytes of their hash: ids themselves never reach Redis.
    fn pfadd(&mut self, key: &str, items: &HashesSet) {
        let mut items: Vec<u64> = items.iter().copied().collect();
        items.sort_unstable();
        for chunk in items.chunks(PFADD_CHUNK) {
            let mut operands = vec![chunk.len().to_string().into_bytes()];
            operands.extend(chunk.iter().map(|hash| hash.to_le_bytes().to_vec()));
            self.op("P", key, &operands);
        }
    }

    fn expire_at(&mut self, key: &str, unix_seconds: i64) {
        self.op("E", key, &[unix_seconds.to_string().into_bytes()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::callbacks::MessagePacket;

    fn packet(send: &str, recv: &str, create_time: i64) -> MessagePacket {
        MessagePacket {
            send_id: send.into(),
            recv_id: recv.into(),
            create_time,
            content_type: crate::callbacks::ContentType(101),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_becomes_one_increment_per_field_and_one_pfadd_per_count() {
        let calendar = Calendar::default();
        let now = 1_795_737_600_000;
        let mut tally = Tally::default();
        for (send, recv) in [("a", "b"), ("b", "a"), ("a", "c")] {
            tally.record_sent(&Sent::new(&packet(send, recv, now + 1000), now, &calendar));
        }
        // Dated a year back: counted in the totals, outside every day.
        tally.record_sent(&Sent::new(&packet("a", "b", now - 365 * MS_PER_DAY), now, &calendar));
        let keys = FleetKeys { prefix: "p:".into() };
        let call = tally.into_call(&keys, &calendar);
        let text: Vec<String> =
            call.args.iter().map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
        let key_of = |name: &str| (call.keys.iter().position(|key| key == name).unwrap() + 3).to_string();
        let increments: Vec<(&str, &str)> = text
            .windows(4)
            .filter(|op| op[0] == "H" && op[1] == key_of("p:totals"))
            .map(|op| (op[2].as_str(), op[3].as_str()))
            .collect();
        assert!(increments.contains(&("messages", "4")), "{increments:?}");
        assert!(increments.contains(&("content_type:text", "4")));
        assert!(increments.contains(&("out_of_window", "1")));
        let day = format!("p:day:{}", crate::sinks::stats::daily::date_text(calendar.day_of(now)));
        let day_messages = text
            .windows(4)
            .any(|op| op[0] == "H" && op[1] == key_of(&day) && op[2] == "messages" && op[3] == "3");
        assert!(day_messages, "{text:?}");
        // Each sender went in once, however many messages it sent: a and b.
        let senders = text.windows(3).find(|op| op[0] == "P" && op[1] == key_of("p:senders")).unwrap();
        assert_eq!(senders[2], "2");
        assert_eq!(call.keys.iter().filter(|key| key.starts_with("p:minute:")).count(), 1);
    }
}
