/**
 * The PostgreSQL broker's SQL, beside its logic (postgres.ts) the way
 * redis-scripts.ts sits beside redis.ts. Every statement of one broker
 * namespace is built here from its table prefix, which the broker has
 * checked against `IDENTIFIER` (it is spliced into the SQL as a quoted name).
 */

/** A table prefix or channel name that is safe to splice into SQL as a quoted identifier. */
export const IDENTIFIER = /^[a-z_][a-z0-9_]{0,40}$/;

/** NOTIFY payloads must stay under 8000 bytes; a frame that does not fit travels by seq and is read from the table. */
export const NOTIFY_LIMIT = 7_900;

/** What a notice adds around a chunk of frames: `{"o":"<origin>","n":<batch>,"i":<index>,"e":"<epoch>","s":<seq>,"b":[…]}`. */
const CHUNK_OVERHEAD = 160;

/** A notice's frame list that stands for one frame too large for a notice (a list always starts with `[`). */
const OVERSIZED = "-";

/**
 * A batch as the publish statement takes it: the streams and the frames as
 * JSON arrays (each frame JSON-encoded once: that text is reused for the
 * notices and their sizes), and the notices — consecutive frames share one
 * while it stays under NOTIFY's limit; a frame too large for a notice gets
 * one of its own that only names it. `notices` joins their frame lists with
 * U+0001, which JSON text never contains raw; `starts` says where each
 * notice's first frame is in the batch (1-based).
 */
export function encodeBatch(batch: ReadonlyArray<{ stream: string; frame: string }>): {
  streams: string;
  frames: string;
  notices: string;
  starts: number[];
} {
  const streams: string[] = new Array(batch.length);
  const frames: string[] = new Array(batch.length);
  const notices: string[] = [];
  const starts: number[] = [];
  let notice: string[] = [];
  let bytes = CHUNK_OVERHEAD;
  const flush = (): void => {
    if (notice.length > 0) notices.push(notice.join(","));
    notice = [];
    bytes = CHUNK_OVERHEAD;
  };
  for (let i = 0; i < batch.length; i++) {
    const stream = JSON.stringify(batch[i]!.stream);
    const frame = JSON.stringify(batch[i]!.frame);
    streams[i] = stream;
    frames[i] = frame;
    const item = `[${stream},${frame}]`;
    const size = Buffer.byteLength(item) + 1;
    if (CHUNK_OVERHEAD + size > NOTIFY_LIMIT) {
      flush();
      notices.push(OVERSIZED);
      starts.push(i + 1);
      continue;
    }
    if (bytes + size > NOTIFY_LIMIT) flush();
    if (notice.length === 0) starts.push(i + 1);
    notice.push(item);
    bytes += size;
  }
  flush();
  return {
    streams: `[${streams.join(",")}]`,
    frames: `[${frames.join(",")}]`,
    notices: notices.join("\u0001"),
    starts,
  };
}

/** The statements of one namespace (see `statements`). */
export type Statements = ReturnType<typeof statements>;

/**
 * The SQL of one broker namespace. Frames live in `<prefix>_frames`; the
 * epoch and the seq counter in the single row of `<prefix>_meta`; each
 * stream's floor (the newest seq pruned from it) in `<prefix>_floors`, and
 * `expired_floor` in meta is the newest seq of any stream dropped whole.
 */
export function statements(prefix: string) {
  const frames = `"${prefix}_frames"`;
  const meta = `"${prefix}_meta"`;
  const floors = `"${prefix}_floors"`;
  return {
    schema: `
      create table if not exists ${frames} (
        seq bigint primary key,
        stream text not null,
        frame text not null,
        at timestamptz not null default now()
      );
      create index if not exists "${prefix}_frames_stream_seq" on ${frames} (stream, seq);
      create table if not exists ${meta} (
        id smallint primary key check (id = 1),
        epoch text not null,
        seq bigint not null,
        expired_floor bigint not null default 0
      );
      create table if not exists ${floors} (stream text primary key, floor bigint not null);`,
    // a new epoch's seqs start above every earlier one's (see EPOCH_SEQ_MARGIN)
    createEpoch: `
      insert into ${meta} (id, epoch, seq)
      values (1, $1, greatest($2::bigint, (extract(epoch from clock_timestamp()) * 10000)::bigint,
                               (select coalesce(max(seq), 0) from ${frames})))
      on conflict (id) do nothing`,
    head: `select epoch, seq::text as seq from ${meta} where id = 1`,
    // A batch of frames in one statement, one transaction: consecutive
    // seqs, one commit. The row lock taken by the update is held until
    // commit, so publishers are serialized and commit order (which is NOTIFY
    // delivery order) equals seq order. A rollback undoes the increment too,
    // so seqs have no holes. Parameters (see encodeBatch): $1 the streams and
    // $2 the frames as JSON arrays, in publish order; $3 the channel; $4 the
    // notices' frame lists, $5 where each starts in the batch; $6 the count;
    // $7 the notices' opening, `{"o":<origin>,"n":<batch number>,`.
    // A notice carries its frames inline, `{o, n, i, e, s: first, b: [[stream, frame], …]}`
    // (`i`: where its frames start in the batch), or, for a frame too large
    // for one, `{o, n, i, e, s: its seq, c: 1}` and listeners read it from the
    // table — except the publishing process, which knows its own frames.
    publish: `
      with input as (
             select stream, frame, ord
             from rows from (json_array_elements_text($1::json), json_array_elements_text($2::json)) with ordinality as i(stream, frame, ord)
           ),
           m as (update ${meta} set seq = seq + $6::int where id = 1 returning epoch, seq - $6::int as base),
           f as (insert into ${frames} (seq, stream, frame) select m.base + input.ord, input.stream, input.frame from m, input)
      select m.epoch, (m.base + 1)::text as first,
             (select count(pg_notify($3, $7::text || '"i":' || (c.start - 1) || ',"e":' || to_json(m.epoch)::text ||
                       ',"s":' || (m.base + c.start) ||
                       case when c.body = '${OVERSIZED}' then ',"c":1}' else ',"b":[' || c.body || ']}' end))
              from unnest(string_to_array($4, chr(1)), $5::int[]) with ordinality as c(body, start, ord)) as notices
      from m`,
    fetchRange: `select seq::text as seq, stream, frame from ${frames} where seq > $1 and seq <= $2 order by seq`,
    // read frames first, floors after: a prune in between can only raise the
    // floor, so a cursor that passes the later check saw complete frames
    historyFrames: `select seq::text as seq, stream, frame from ${frames} where stream = any($1) and seq > $2 order by seq`,
    historyFloor: `
      select epoch, seq::text as seq,
             greatest(expired_floor, (select coalesce(max(floor), 0) from ${floors} where stream = any($1)))::text as floor
      from ${meta} where id = 1`,
    sweepLock: `select pg_try_advisory_xact_lock(hashtext($1)) as locked`,
    prune: `
      with ranked as (
        select seq, at, row_number() over (partition by stream order by seq desc) as rn from ${frames}
      ), doomed as (
        delete from ${frames} f using ranked r
        where f.seq = r.seq and r.rn > $1 and (r.rn > $2 or r.at < now() - $3 * interval '1 millisecond')
        returning f.stream, f.seq
      )
      insert into ${floors} (stream, floor) select stream, max(seq) from doomed group by stream
      on conflict (stream) do update set floor = greatest(${floors}.floor, excluded.floor)`,
    expire: `
      with idle as (
        select stream, max(seq) as last from ${frames} group by stream having max(at) < now() - $1 * interval '1 millisecond'
      ), gone as (
        delete from ${frames} f using idle i where f.stream = i.stream
      ), forgotten as (
        delete from ${floors} fl using idle i where fl.stream = i.stream
      )
      update ${meta} set expired_floor = greatest(expired_floor, (select coalesce(max(last), 0) from idle)) where id = 1`,
  };
}
