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

/** What a notice adds around a chunk of frames: `{"e":"<epoch>","s":<seq>,"b":[…]}`. */
const CHUNK_OVERHEAD = 100;

/**
 * A batch as the publish statement takes it: `json`, the frames as one JSON
 * array of `[stream, frame]` (one JSON.stringify per frame, reused for the
 * sizes), and `chunks`, the notice each frame goes in — consecutive frames
 * share a positive chunk while their notice stays under NOTIFY's limit; a
 * frame too large for a notice alone gets a negative one of its own.
 */
export function encodeBatch(batch: ReadonlyArray<{ stream: string; frame: string }>): {
  json: string;
  chunks: number[];
} {
  const items: string[] = new Array(batch.length);
  const chunks: number[] = new Array(batch.length);
  let chunk = 0;
  let bytes = NOTIFY_LIMIT;
  for (let i = 0; i < batch.length; i++) {
    const { stream, frame } = batch[i]!;
    const item = JSON.stringify([stream, frame]);
    items[i] = item;
    // json_agg separates elements with ", "
    const size = Buffer.byteLength(item) + 2;
    if (CHUNK_OVERHEAD + size > NOTIFY_LIMIT) {
      chunks[i] = -(i + 1);
      bytes = NOTIFY_LIMIT;
      continue;
    }
    if (bytes + size > NOTIFY_LIMIT) {
      chunk++;
      bytes = CHUNK_OVERHEAD;
    }
    chunks[i] = chunk;
    bytes += size;
  }
  return { json: `[${items.join(",")}]`, chunks };
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
    // seqs, one commit. $1: the batch as JSON, `[[stream, frame], …]` in
    // publish order; $2: the channel; $3: the notice chunk of each frame (see
    // encodeBatch). The row lock taken by the update is held until commit, so
    // publishers are serialized and commit order (which is NOTIFY delivery
    // order) equals seq order. A rollback undoes the increment too, so seqs
    // have no holes. One notice per chunk: its frames inline,
    // `{e, s: first, b: [[stream, frame], …]}`, or, for a frame too large for
    // a notice (a negative chunk), `{e, s: its seq, c: 1}` and listeners read
    // it from the table.
    publish: `
      with input as (
             select j, chunk, ord from rows from (json_array_elements($1::json), unnest($3::int[])) with ordinality as i(j, chunk, ord)
           ),
           m as (update ${meta} set seq = seq + cardinality($3::int[]) where id = 1
                 returning epoch, seq - cardinality($3::int[]) as base),
           f as (insert into ${frames} (seq, stream, frame) select m.base + input.ord, input.j->>0, input.j->>1 from m, input)
      select m.epoch, (m.base + 1)::text as first,
             (select count(pg_notify($2, n.payload)) from (
                select case when i.chunk < 0
                         then json_build_object('e', m.epoch, 's', m.base + min(i.ord), 'c', 1)::text
                         else '{"e":' || to_json(m.epoch)::text || ',"s":' || (m.base + min(i.ord)) ||
                              ',"b":' || json_agg(i.j order by i.ord)::text || '}'
                       end as payload
                from input i group by i.chunk order by min(i.ord)) n) as notices
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
