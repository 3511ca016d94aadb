//! The Lua scripts behind [`RedisStorage`](super::RedisStorage). Each runs
//! atomically on the server, so a value and the index entries that list it
//! change together, and a lock is only refreshed, released or written under by
//! the client whose token it holds.
//!
//! They use only commands of Redis 6.2 and later (Debian's 7.0 included):
//! there is no native compare-and-delete before Redis 8.4, so release and
//! extension are compare-and-act scripts.
//!
//! # Sent twice
//! A command may reach the server twice: this storage sends a command again
//! when its connection turned out to be dead (see the connection module), and
//! a Redis Cluster client sends it again after a node's connection broke. The
//! first sending may have run before its reply was lost. So every script is
//! safe to run twice: reads and the lock scripts (which compare the caller's
//! token) by their nature, and the two that change values ([`STORE`] and
//! [`DELETE_VALUE`]) because each call carries a random operation id: the
//! first run that changes something records it (a key that expires after
//! [`OP_MEMORY_MS`]), and a second run that finds it answers as the first did
//! without touching anything. Without it, a write sent again after another
//! client's newer write would overwrite that, and a delete sent again would
//! delete a value stored since.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, ToRedisArgs};

pub(super) use crate::storage::redis_defaults::OP_MEMORY_MS;

/// A Lua script and its SHA1.
#[derive(Debug)]
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// A call of this script, to be given its keys and arguments.
    pub(super) fn prepare_invoke(&self) -> Call<'_> {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`Lua`] script.
///
/// Sent as `EVALSHA`; when the server does not know the script (`NOSCRIPT`:
/// it restarted, or a cluster node never saw it) as `EVAL` with the whole
/// script, which the server then caches. Unlike redis-rs's `SCRIPT LOAD`
/// fallback, that is one command routed by its keys, so it reaches the node
/// that owns them on a cluster too.
pub(super) struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    /// Adds a key (`KEYS[i]`).
    pub(super) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, verb: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }

    /// Runs the script (see the type's docs).
    pub(super) async fn invoke_async<T: FromRedisValue>(
        &self,
        con: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.lua.hash)
            .query_async(con)
            .await
        {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.lua.code).query_async(con).await
            }
            answer => answer,
        }
    }
}

/// The scripts of one storage.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) store: Lua,
    pub(super) load: Lua,
    pub(super) delete_value: Lua,
    pub(super) stat: Lua,
    pub(super) acquire: Lua,
    pub(super) extend: Lua,
    pub(super) release: Lua,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            store: Lua::new(STORE),
            load: Lua::new(LOAD),
            delete_value: Lua::new(DELETE_VALUE),
            stat: Lua::new(STAT),
            acquire: Lua::new(ACQUIRE),
            extend: Lua::new(EXTEND),
            release: Lua::new(RELEASE),
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
/// - fenced only: `KEYS[2+2n]` the lock;
/// - last: the operation id's key (see [Sent twice](self#sent-twice)).
/// - `ARGV[1]` the bytes, `ARGV[2]` the modification time (Unix ms), `ARGV[3]`
///   `n`, `ARGV[4 .. 3+n]` the components, `ARGV[4+n]` the fence (`''`:
///   unfenced), `ARGV[5+n]` the holder's token (`''`: not known here),
///   `ARGV[6+n]` how long to remember the operation id (ms).
///
/// A fenced write goes ahead only while the lock holds `<fence>:<token>`
/// with the guard's fence (and token, when known): see [`ACQUIRE`]. A call
/// whose operation id is remembered has been written: it answers
/// [`STORED`] and writes nothing.
const STORE: &str = r"
local op = KEYS[#KEYS]
if redis.call('EXISTS', op) == 1 then return 0 end
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
redis.call('SET', op, '1', 'PX', ARGV[6 + n])
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
/// fenced only `KEYS[2+n]` the lock, last the operation id's key; `ARGV[1]`
/// `n`, `ARGV[2 .. 1+n]` its components, `ARGV[2+n]` the fence (`''`:
/// unfenced), `ARGV[3+n]` the holder's token (`''`: not known here),
/// `ARGV[4+n]` how long to remember the operation id (ms). A directory hash
/// whose last entry goes vanishes (Redis removes empty hashes), and its entry
/// in its parent is then removed too. Answers 1 if the value existed (or this
/// operation id deleted it before), else 0, and -1 (nothing deleted) when
/// fenced out, checked as in [`STORE`].
const DELETE_VALUE: &str = r"
local op = KEYS[#KEYS]
if redis.call('EXISTS', op) == 1 then return 1 end
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
redis.call('SET', op, '1', 'PX', ARGV[4 + n])
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
