//! The Lua scripts behind [`RedisStorage`](super::RedisStorage). Each runs
//! atomically on the server, so a value and the index entries that list it
//! change together, and a lock is only refreshed, released or written under by
//! the client whose token it holds.
//!
//! They use only commands of Redis 6.2 and later (Debian's 7.0 included):
//! there is no native compare-and-delete before Redis 8.4, so release and
//! extension are compare-and-act scripts.

use redis::Script;

/// The scripts, loaded once per storage (a [`Script`] caches its SHA1 and
/// falls back to `SCRIPT LOAD` after a server restart flushed it).
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) store: Script,
    pub(super) load: Script,
    pub(super) delete_value: Script,
    pub(super) stat: Script,
    pub(super) acquire: Script,
    pub(super) extend: Script,
    pub(super) release: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            store: Script::new(STORE),
            load: Script::new(LOAD),
            delete_value: Script::new(DELETE_VALUE),
            stat: Script::new(STAT),
            acquire: Script::new(ACQUIRE),
            extend: Script::new(EXTEND),
            release: Script::new(RELEASE),
        }
    }
}

/// What [`STORE`] answers.
pub(super) const STORED: i64 = 0;
/// [`STORE`]: the key has keys below it.
pub(super) const HAS_CHILDREN: i64 = 1;
/// [`STORE`]: a parent of the key holds a value.
pub(super) const PARENT_IS_VALUE: i64 = 2;
/// [`STORE`]: the fence (or the lock's token) no longer matches.
pub(super) const FENCED_OUT: i64 = 3;

/// Writes a value and its index entries, for a key of `n` components
/// `c1/../cn` whose ancestors are `A0 = ""`, `A1 = c1`, ... `A(n-1)`.
///
/// - `KEYS[1]` the value hash, `KEYS[2]` the key's own directory hash (it
///   must not exist: a key is a value or a directory, not both);
/// - `KEYS[3 .. 2+n]` the directory hashes of `A0 .. A(n-1)`;
/// - `KEYS[3+n .. 1+2n]` the value hashes of `A1 .. A(n-1)` (none may exist);
/// - fenced only: `KEYS[2+2n]` the lock.
/// - `ARGV[1]` the bytes, `ARGV[2]` the modification time (Unix ms), `ARGV[3]`
///   `n`, `ARGV[4 .. 3+n]` the components, `ARGV[4+n]` the fence (`''`:
///   unfenced), `ARGV[5+n]` the holder's token (`''`: not known here).
///
/// A fenced write goes ahead only while the lock holds `<fence>:<token>`
/// with the guard's fence (and token, when known): see [`ACQUIRE`].
const STORE: &str = r"
local n = tonumber(ARGV[3])
local fence = ARGV[4 + n]
if fence ~= '' then
  local held = redis.call('GET', KEYS[2 + 2 * n])
  if not held then return 3 end
  local f, t = string.match(held, '^(%d+):(.*)$')
  if f ~= fence then return 3 end
  local token = ARGV[5 + n]
  if token ~= '' and t ~= token then return 3 end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
for i = 1, n - 1 do
  if redis.call('EXISTS', KEYS[2 + n + i]) == 1 then return 2 end
end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'm', ARGV[2])
for i = 1, n do
  local kind = 'd'
  if i == n then kind = 'v' end
  redis.call('HSET', KEYS[2 + i], ARGV[3 + i], kind)
end
return 0
";

/// Reads a value: `KEYS[1]` the value hash, `ARGV[1]` the largest size
/// accepted. Nil when absent; an error reply when larger.
const LOAD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSTRLEN', KEYS[1], 'd') > tonumber(ARGV[1]) then
  return redis.error_reply('ERR certauto: stored value larger than the read bound')
end
return redis.call('HGET', KEYS[1], 'd')
";

/// [`DELETE_VALUE`]: the fence (or the lock's token) no longer matches.
pub(super) const DELETE_FENCED_OUT: i64 = -1;

/// Deletes one value and prunes the index: `KEYS[1]` the value hash,
/// `KEYS[2 .. 1+n]` the directory hashes of its ancestors `A0 .. A(n-1)`,
/// fenced only `KEYS[2+n]` the lock; `ARGV[1]` `n`, `ARGV[2 .. 1+n]` its
/// components, `ARGV[2+n]` the fence (`''`: unfenced), `ARGV[3+n]` the
/// holder's token (`''`: not known here). A directory hash whose last entry
/// goes vanishes (Redis removes empty hashes), and its entry in its parent is
/// then removed too. Answers 1 if the value existed, else 0, and -1 (nothing
/// deleted) when fenced out, checked as in [`STORE`].
const DELETE_VALUE: &str = r"
local n = tonumber(ARGV[1])
local fence = ARGV[2 + n]
if fence ~= '' then
  local held = redis.call('GET', KEYS[2 + n])
  if not held then return -1 end
  local f, t = string.match(held, '^(%d+):(.*)$')
  if f ~= fence then return -1 end
  local token = ARGV[3 + n]
  if token ~= '' and t ~= token then return -1 end
end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = n, 1, -1 do
  redis.call('HDEL', KEYS[1 + i], ARGV[1 + i])
  if redis.call('EXISTS', KEYS[1 + i]) == 1 then break end
end
return 1
";

/// Facts about a key: `KEYS[1]` the value hash, `KEYS[2]` its directory hash.
/// `{1, size, modified_ms}` for a value, `{2}` for a directory, `{0}` for
/// nothing.
const STAT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local m = tonumber(redis.call('HGET', KEYS[1], 'm')) or 0
  return {1, redis.call('HSTRLEN', KEYS[1], 'd'), m}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end
return {0}
";

/// Takes a lock if free: `KEYS[1]` the lock, `KEYS[2]` the deployment's one
/// fence counter, `ARGV[1]` the token, `ARGV[2]` the lease (ms), `ARGV[3]`
/// the client's time in Unix microseconds. Answers the new fence (at least
/// 1), or 0 when the lock is held by another token. The lock holds
/// `<fence>:<token>`.
///
/// A missing counter (a new deployment, or a server that lost its data: a
/// restart without persistence, an eviction, `FLUSHDB`) starts at the time
/// in microseconds, above any fence given before it was lost (fences come
/// one per acquisition, far fewer than one per microsecond), so fences do
/// not repeat after a loss.
///
/// When the lock already holds `ARGV[1]` (an attempt sent again after its
/// connection broke, whose first sending took the lock), the lease is
/// renewed and the fence it was given answered.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local f, t = string.match(held, '^(%d+):(.*)$')
  if t == ARGV[1] and f then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return f
  end
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'NX')
local fence = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return fence
";

/// Extends a lock still holding `ARGV[1]` (as `<fence>:<token>`) to a lease
/// of `ARGV[2]` ms from now: 1 if extended, 0 if the lock is gone or someone
/// else's.
const EXTEND: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^%d+:(.*)$') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes a lock still holding `ARGV[1]` (as `<fence>:<token>`): 1 if
/// deleted, 0 if it was gone or someone else's.
const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^%d+:(.*)$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";
