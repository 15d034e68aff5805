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
 * A batch's frames cut into notices under NOTIFY's limit, for the publish
 * statement: `bodies[k]` holds chunk k's `[stream, frame]` pairs as JSON
 * without the brackets (null: one frame too large for a notice) and
 * `starts[k]` the 1-based index of its first frame in the batch.
 */
export function noticeChunks(batch: ReadonlyArray<{ stream: string; frame: string }>): {
  bodies: Array<string | null>;
  starts: number[];
} {
  const bodies: Array<string | null> = [];
  const starts: number[] = [];
  let body: string[] = [];
  let bytes = CHUNK_OVERHEAD;
  const flush = (): void => {
    if (body.length === 0) return;
    bodies.push(body.join(","));
    body = [];
    bytes = CHUNK_OVERHEAD;
  };
  batch.forEach(({ stream, frame }, i) => {
    const item = JSON.stringify([stream, frame]);
    const size = Buffer.byteLength(item) + 1;
    if (CHUNK_OVERHEAD + size > NOTIFY_LIMIT) {
      flush();
      bodies.push(null);
      starts.push(i + 1);
      return;
    }
    if (bytes + size > NOTIFY_LIMIT) flush();
    if (body.length === 0) starts.push(i + 1);
    body.push(item);
    bytes += size;
  });
  flush();
  return { bodies, starts };
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
    // A batch of frames ($1 streams, $2 frames, in publish order) in one
    // statement, one transaction: consecutive seqs, one commit. The row lock
    // taken by the update is held until commit, so publishers are serialized
    // and commit order (which is NOTIFY delivery order) equals seq order. A
    // rollback undoes the increment too, so seqs have no holes. The notices
    // come cut to size (see noticeChunks): each chunk of frames inline,
    // `{e, s: first, b: [[stream, frame], …]}`, or, for a frame too large for
    // a notice, `{e, s: its seq, c: 1}` and listeners read it from the table.
    publish: `
      with input as (
             select stream, frame, ord from unnest($1::text[], $2::text[]) with ordinality as i(stream, frame, ord)
           ),
           m as (update ${meta} set seq = seq + cardinality($1::text[]) where id = 1
                 returning epoch, seq - cardinality($1::text[]) as base),
           f as (insert into ${frames} (seq, stream, frame) select m.base + input.ord, input.stream, input.frame from m, input)
      select m.epoch, (m.base + 1)::text as first,
             (select count(pg_notify($3, case
                       when c.body is null then json_build_object('e', m.epoch, 's', m.base + c.start, 'c', 1)::text
                       else '{"e":' || to_json(m.epoch)::text || ',"s":' || (m.base + c.start) || ',"b":[' || c.body || ']}'
                     end))
              from unnest($4::text[], $5::int[]) with ordinality as c(body, start, ord)) as notices
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
