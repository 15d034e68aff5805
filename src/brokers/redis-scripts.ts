import { createHash } from "node:crypto";

/**
 * The Redis broker's Lua scripts. Redis runs each script atomically, so one
 * script that takes the next seq, stores the frame and PUBLISHes it makes
 * publish order equal seq order for every subscriber of every process.
 *
 * Keys (under the broker's prefix):
 * - `meta`: a hash `{ epoch, seq, watches }`. They live in one key so they can
 *   only be lost together: a Redis that lost `seq` has lost `epoch` too, and
 *   the next script starts a new epoch instead of reusing old positions;
 *   `watches` is the watch generation (absent: 0), compared with the epoch.
 * - `watch`: a sorted set of the data channels some process watches, scored
 *   by the Redis time in ms their watch expires at (see watches.ts).
 * - `clock`: a sorted set of checkpoints, Redis time in ms -> the seq taken at
 *   that time, at most one per `clockStepMs`. It tells how old a cursor is, so
 *   a cursor older than `idleMs` — whose streams may have expired whole — is
 *   answered with a gap.
 * - `s:<stream>`: one sorted set per stream, scored by seq, members
 *   `<seq>:<ms>:<frame>`, plus one marker member `~floor` scored with the
 *   seq of the newest frame evicted from the stream (0 while none was). Frame
 *   members start with a digit, so the marker cannot collide with one, and its
 *   score is below every retained frame's, so a range read that starts below
 *   the floor returns the marker first: that is how a trimmed cursor shows.
 *   The key expires `idleMs` after the stream's newest frame.
 *
 * Seqs stay below 1e14: Lua formats numbers with 14 significant digits.
 */

const NOW_AND_META = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = now_ms()
-- a missing meta hash means a new epoch; its seqs start after every earlier
-- epoch's (see EPOCH_SEQ_MARGIN in continuity.ts)
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  local start = now * 10
  local min = tonumber(ARGV[2])
  if min > start then start = min end
  redis.call('HSET', KEYS[1], 'seq', start)
end
`;

/**
 * A clock checkpoint (see `clock` above) naming `seq` at `now`, unless one
 * was taken less than `step` ms before; checkpoints older than `idle` ms go.
 */
const CHECKPOINT = `
local function checkpoint(clock, now, seq, step, idle)
  local last = redis.call('ZRANGE', clock, -1, -1, 'WITHSCORES')
  if #last == 0 or now - tonumber(last[2]) >= step then
    redis.call('ZADD', clock, now, seq)
    redis.call('ZREMRANGEBYSCORE', clock, '-inf', '(' .. (now - idle))
  end
end
`;

/**
 * Publishes a batch of frames in one call: they take consecutive seqs in
 * the order given, so the batch is one step of the seq order for every process.
 *
 * KEYS: meta, clock, then s:<stream> of each distinct stream of the batch.
 * ARGV: epoch candidate, min seq of a new epoch, frames to keep, ageMs,
 * maxFrames, idleMs, channel, clockStepMs, then the batch as batch-wire.ts
 * sends it: the channel message's head (`{"o":…,"n":…,`) and tail (`"k":…}`
 * and a newline), the number of frames, each frame's stream (an index into
 * KEYS from 3, counting from 0; comma-separated), each frame's byte length
 * (comma-separated), and the body (the frames back to back). No frame is
 * encoded or decoded on either side: the script cuts the body into members,
 * and the channel message carries the body as it came. Then the check: the
 * epoch and watch generation the batch's skipped data events were skipped
 * by ('' and '': none).
 * Returns { epoch, seq of the first frame }, or 0 when the check fails
 * (nothing was written: the batch is sent again unchecked), or 1 when it
 * passed for a batch of no frames.
 */
export const PUBLISH_SCRIPT = `${CHECKPOINT}
if ARGV[15] ~= '' then
  local state = redis.call('HMGET', KEYS[1], 'epoch', 'watches')
  if state[1] ~= ARGV[15] or (state[2] or '0') ~= ARGV[16] then return 0 end
  -- every frame of the batch was skipped: the check was all it had to do
  if ARGV[11] == '0' then return 1 end
end
-- all or nothing: a key of another type (someone else's) fails the batch
-- before anything is written. The count is kept for retention (0: a new
-- stream, whose floor marker goes in with its frames).
local card = {}
for k = 3, #KEYS do
  local n = redis.pcall('ZCARD', KEYS[k])
  if type(n) == 'table' and n.err then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is not the sorted set of a stream')
  end
  card[k] = n
end
${NOW_AND_META}
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local count = tonumber(ARGV[11])
local first = redis.call('HINCRBY', KEYS[1], 'seq', count) - count + 1

-- one ZADD per stream with all its frames (a call costs more than a member)
local members = {}
local body = ARGV[14]
local lengths = string.gmatch(ARGV[13], '%d+')
local at = 1
local seq = first
-- numbers are formatted once per frame (the score and the member share it): that is a good part of a frame's cost
local stamp = ':' .. now .. ':'
for index in string.gmatch(ARGV[12], '%d+') do
  local k = tonumber(index) + 3
  local ends = at + tonumber(lengths())
  local list = members[k]
  if not list then
    if card[k] == 0 then list = { 0, '~floor' } else list = {} end
    members[k] = list
  end
  local score = seq .. ''
  list[#list + 1] = score
  list[#list + 1] = score .. stamp .. string.sub(body, at, ends - 1)
  at = ends
  seq = seq + 1
end
for k, list in pairs(members) do
  card[k] = card[k] + redis.call('ZADD', KEYS[k], unpack(list))
end

-- retention, once per stream of the batch: a frame goes when it is beyond the
-- newest maxFrames, or beyond the newest 'keep' and older than ageMs; the
-- oldest are ranks 1.. (0 is the marker)
local keep, age, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for k = 3, #KEYS do
  local key = KEYS[k]
  local n = card[k] - 1
  local evicted = -1
  if n > cap then
    local newest = redis.call('ZRANGE', key, n - cap, n - cap, 'WITHSCORES')
    evicted = tonumber(newest[2])
    redis.call('ZREMRANGEBYRANK', key, 1, n - cap)
    n = cap
  end
  while n > keep do
    local oldest = redis.call('ZRANGE', key, 1, 1, 'WITHSCORES')
    local member = oldest[1]
    local c1 = string.find(member, ':', 1, true)
    local c2 = string.find(member, ':', c1 + 1, true)
    if now - tonumber(string.sub(member, c1 + 1, c2 - 1)) <= age then break end
    evicted = tonumber(oldest[2])
    redis.call('ZREMRANGEBYRANK', key, 1, 1)
    n = n - 1
  end
  if evicted >= 0 then redis.call('ZADD', key, evicted, '~floor') end
  redis.call('PEXPIRE', key, ARGV[6])
end

-- the checkpoint names the batch's first seq: every frame published before
-- now has a lower one
checkpoint(KEYS[2], now, first, tonumber(ARGV[8]), tonumber(ARGV[6]))

-- the epoch is base64url: nothing to escape
redis.call('PUBLISH', ARGV[7], ARGV[9] .. '"e":"' .. epoch .. '","s":' .. string.format('%d', first) .. ',' .. ARGV[10] .. body)
return { epoch, first }
`;

/**
 * KEYS: meta. ARGV: epoch candidate, min seq of a new epoch.
 * Returns { epoch, seq } (creating the epoch when Redis has none).
 */
export const HEAD_SCRIPT = `${NOW_AND_META}
return { redis.call('HGET', KEYS[1], 'epoch'), tonumber(redis.call('HGET', KEYS[1], 'seq')) }
`;

/**
 * KEYS: meta, clock, s:<stream>… ARGV: epoch of the cursor, seq of the cursor, idleMs.
 * Returns { 'ok', members of stream 1, members of stream 2, … } with the frames
 * after the cursor, or { reason } when the history no longer reaches back to it.
 */
export const HISTORY_SCRIPT = `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch or epoch ~= ARGV[1] then return { 'epoch' } end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local after = tonumber(ARGV[2])
if after > head then return { 'ahead' } end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- every frame published before now - idleMs has a seq below the first
-- checkpoint taken after it; with no such checkpoint, below the head
local checkpoint = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[3]), '+inf', 'LIMIT', 0, 1)
local horizon = head
if #checkpoint > 0 then horizon = tonumber(checkpoint[1]) - 1 end
if after < horizon then return { 'idle' } end
local out = { 'ok' }
for i = 3, #KEYS do
  local members = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. ARGV[2], '+inf')
  if members[1] == '~floor' then return { 'trimmed' } end
  out[#out + 1] = members
end
return out
`;

/**
 * Registers watches of data channels (see WatchServer.register).
 * KEYS: meta, clock, watch, since, then s:<channel> of each channel. ARGV:
 * epoch candidate, min seq of a new epoch, ttlMs, idleMs, clockStepMs, then
 * the channels (as many as KEYS from 5). Expired watches go first. A new
 * channel's key is restarted with its floor marker at the reserved seq,
 * which `since` (a hash) keeps as the start of its watch: a cursor from
 * before gets a gap, one read after resumes. The reserved seq gets a clock
 * checkpoint as a publish's first seq does: without one, in a namespace
 * with none younger than idleMs, the head would pass a cursor equal to it
 * and HISTORY_SCRIPT would take it for an idle one.
 * Returns { epoch, generation before, generation after, new channels, each
 * channel's since }.
 */
export const WATCH_SCRIPT = `${CHECKPOINT}${NOW_AND_META}
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local before = tonumber(redis.call('HGET', KEYS[1], 'watches') or '0')
local expires = now + tonumber(ARGV[3])
for _, channel in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('HDEL', KEYS[4], channel)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local fresh = {}
local since = {}
local seq = nil
for k = 5, #KEYS do
  local channel = ARGV[k + 1]
  local score = redis.call('ZSCORE', KEYS[3], channel)
  if not score then
    if not seq then seq = redis.call('HINCRBY', KEYS[1], 'seq', 1) end
    redis.call('DEL', KEYS[k])
    redis.call('ZADD', KEYS[k], seq, '~floor')
    redis.call('PEXPIRE', KEYS[k], ARGV[4])
    redis.call('HSET', KEYS[4], channel, seq)
    fresh[#fresh + 1] = channel
  end
  if not score or tonumber(score) < expires then redis.call('ZADD', KEYS[3], expires, channel) end
  since[#since + 1] = redis.call('HGET', KEYS[4], channel)
end
local after = before
if seq then
  after = redis.call('HINCRBY', KEYS[1], 'watches', 1)
  checkpoint(KEYS[2], now, seq, tonumber(ARGV[5]), tonumber(ARGV[4]))
end
return { epoch, before, after, fresh, since }
`;

/**
 * KEYS: meta, watch. Returns { epoch or false, watch generation, the data
 * channels whose watch has not expired }, read together.
 */
export const WATCHED_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'epoch', 'watches')
return { state[1], tonumber(state[2] or '0'), redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf') }
`;

export function sha1(text: string): string {
  return createHash("sha1").update(text).digest("hex");
}
