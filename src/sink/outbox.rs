//! The durable outbox of MQTT alerts: each alert is appended and fsync'd here before it is
//! published, and leaves only once the broker has it for good, so a broker outage, a dropped
//! connection or a SIGKILL loses none.
//!
//! Alerts go out at QoS 2, and the outbox also records each alert's QoS 2 flow (the packet id
//! it was sent under, and whether the broker confirmed receipt), so that after a crash the
//! flow is resumed where it stopped instead of starting again: the broker then forwards each
//! alert once, even when vigil died between the broker's receipt and its answer.
//!
//! The file is a JSON-lines log in the state folder: `{"put": entry}` when an alert enters,
//! `{"sent": [id, packet id]}`, `{"rec": id}` (PUBREC), `{"ack": id}` (PUBCOMP: delivered),
//! `{"drop": id}` (pushed out by the bound) and `{"reset": null}` (the broker lost the
//! session: flows start again). A torn last line (the process died mid-write) is ignored. The
//! log is rewritten compactly at open and when it has grown well past what it holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What to do with a new alert when the outbox holds `max` undelivered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Drop the oldest undelivered alert to make room (the newest state of the line matters
    /// most after a long outage).
    #[default]
    DropOldest,
    /// Keep what is queued and drop the new alert.
    DropNewest,
}

/// One alert waiting for the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The alert id (deterministic per frame).
    pub id: String,
    /// The MQTT topic.
    pub topic: String,
    /// The alert JSON.
    pub payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Put(Entry),
    Sent(String, u16),
    Rec(String),
    Ack(String),
    Drop(String),
    Reset(()),
}

/// Where an alert's QoS 2 flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// Not sent in the broker's current session.
    #[default]
    Unsent,
    /// PUBLISH sent under this packet id; no PUBREC yet.
    Sent(u16),
    /// The broker confirmed receipt (PUBREC) of this packet id; PUBREL/PUBCOMP remain.
    Received(u16),
}

/// Packet ids used for alerts: 1..=PACKET_IDS (the MQTT client's in-flight table is this
/// size).
pub const PACKET_IDS: u16 = 128;

/// What [`Outbox::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// Stored; it will be published.
    Stored,
    /// Stored, and the oldest undelivered alert (this id) was dropped to make room.
    StoredDroppingOldest(String),
    /// Not stored: the outbox is full and the policy keeps what is queued.
    DroppedNewest,
    /// This id, or the same frame under another time, is already queued or was delivered
    /// recently (a frame scored again after a restart, or redelivered): not sent twice.
    Duplicate,
}

/// Ids of delivered alerts remembered, so that a frame re-scored after a crash is not alerted
/// twice.
const REMEMBERED: usize = 20_000;

/// The part of an alert id that names the frame (device, camera, source, content), without
/// its time: the last 16 characters of the ULID. A frame that arrives again under a new time
/// (an MQTT frame without a time of its own, redelivered by the broker after vigil scored it
/// but before the broker had its acknowledgement) has the same frame part, so it is not
/// alerted twice. Ids that are not ULIDs count whole.
fn frame_of(id: &str) -> &str {
    id.get(10..).filter(|_| id.len() == 26).unwrap_or(id)
}

/// The outbox.
pub struct Outbox {
    path: PathBuf,
    file: File,
    /// Undelivered, oldest first, each with its sequence number and flow.
    pending: VecDeque<(u64, Entry, Flow)>,
    by_packet: HashMap<u16, String>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
    delivered: VecDeque<String>,
    delivered_set: HashSet<String>,
    /// The frame part ([`frame_of`]) of every id queued or remembered as delivered.
    frames: HashSet<String>,
    records: usize,
    max: usize,
    policy: FullPolicy,
    /// Records beyond what the log holds before it is compacted.
    slack: usize,
    /// The log's length after its last whole record (`None`: unknown, nothing is cut).
    good_len: Option<u64>,
}

impl Outbox {
    /// Opens (creating) the outbox at `path`, holding at most `max` undelivered alerts.
    pub fn open(path: &Path, max: usize, policy: FullPolicy) -> anyhow::Result<Outbox> {
        let mut o = Outbox {
            path: path.to_owned(),
            file: open_append(path)?,
            pending: VecDeque::new(),
            by_packet: HashMap::new(),
            seq_of: HashMap::new(),
            next_seq: 0,
            delivered: VecDeque::new(),
            delivered_set: HashSet::new(),
            frames: HashSet::new(),
            records: 0,
            max: max.max(1),
            policy,
            slack: 10_000,
            good_len: None,
        };
        let reader = BufReader::new(File::open(path).with_context(|| format!("outbox {}", path.display()))?);
        let mut torn = 0;
        for line in reader.split(b'\n') {
            let line = line.with_context(|| format!("reading the outbox {}", path.display()))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(Record::Put(e)) => {
                    o.insert(e);
                }
                Ok(Record::Sent(id, pkid)) => o.set_flow(&id, Flow::Sent(pkid)),
                Ok(Record::Rec(id)) => {
                    if let Some(Flow::Sent(pkid)) = o.flow(&id) {
                        o.set_flow(&id, Flow::Received(pkid));
                    }
                }
                Ok(Record::Reset(())) => o.reset_flows(),
                Ok(Record::Ack(id)) => o.remove(&id, true),
                Ok(Record::Drop(id)) => o.remove(&id, false),
                Err(_) => torn += 1,
            }
        }
        if torn > 0 {
            tracing::warn!("outbox {}: {torn} torn line(s) ignored (written when vigil died)", path.display());
        }
        while o.pending.len() > o.max {
            let id = o.pending.front().map(|(_, e, _)| e.id.clone()).expect("not empty");
            o.remove(&id, false);
        }
        o.compact()?;
        Ok(o)
    }

    fn known(&self, id: &str) -> bool {
        self.seq_of.contains_key(id) || self.delivered_set.contains(id) || self.frames.contains(frame_of(id))
    }

    fn insert(&mut self, e: Entry) -> bool {
        if self.known(&e.id) {
            return false;
        }
        self.frames.insert(frame_of(&e.id).to_owned());
        self.seq_of.insert(e.id.clone(), self.next_seq);
        self.pending.push_back((self.next_seq, e, Flow::Unsent));
        self.next_seq += 1;
        true
    }

    fn position(&self, id: &str) -> Option<usize> {
        let seq = *self.seq_of.get(id)?;
        let at = self.pending.partition_point(|(s, _, _)| *s < seq);
        self.pending.get(at).is_some_and(|(s, _, _)| *s == seq).then_some(at)
    }

    fn flow(&self, id: &str) -> Option<Flow> {
        self.position(id).map(|at| self.pending[at].2)
    }

    fn set_flow(&mut self, id: &str, flow: Flow) {
        let Some(at) = self.position(id) else { return };
        if let Flow::Sent(p) | Flow::Received(p) = self.pending[at].2 {
            self.by_packet.remove(&p);
        }
        if let Flow::Sent(p) | Flow::Received(p) = flow {
            self.by_packet.insert(p, id.to_owned());
        }
        self.pending[at].2 = flow;
    }

    fn reset_flows(&mut self) {
        for (_, _, f) in self.pending.iter_mut() {
            *f = Flow::Unsent;
        }
        self.by_packet.clear();
    }

    fn remove(&mut self, id: &str, delivered: bool) {
        if let Some(at) = self.position(id) {
            self.set_flow(id, Flow::Unsent);
            self.pending.remove(at);
        }
        self.seq_of.remove(id);
        if !delivered {
            self.frames.remove(frame_of(id));
        } else if self.delivered_set.insert(id.to_owned()) {
            self.delivered.push_back(id.to_owned());
            if self.delivered.len() > REMEMBERED
                && let Some(old) = self.delivered.pop_front()
            {
                self.delivered_set.remove(&old);
                self.frames.remove(frame_of(&old));
            }
        }
    }

    fn append(&mut self, r: &Record, sync: bool) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(r).expect("a record serialises");
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // A full disk may take part of the line: cut it off, so the next record (once
            // there is space) starts on a line of its own instead of merging with a torn one.
            if let Ok(end) = self.file.metadata().map(|m| m.len())
                && let Some(good) = self.good_len
                && end > good
            {
                let _ = self.file.set_len(good);
            }
            return Err(e).with_context(|| format!("writing the outbox {}", self.path.display()));
        }
        self.good_len = self.good_len.map(|l| l + line.len() as u64);
        if sync {
            self.file.sync_data().with_context(|| format!("syncing the outbox {}", self.path.display()))?;
        }
        self.records += 1;
        Ok(())
    }

    /// Stores an alert durably (written and fsync'd before this returns).
    pub fn put(&mut self, e: Entry) -> anyhow::Result<Put> {
        if self.known(&e.id) {
            return Ok(Put::Duplicate);
        }
        let mut dropped = None;
        if self.pending.len() >= self.max {
            match self.policy {
                FullPolicy::DropNewest => return Ok(Put::DroppedNewest),
                FullPolicy::DropOldest => {
                    // The oldest not yet in flight: an exchange under way keeps its packet id
                    // until the broker ends it.
                    let Some(old) =
                        self.pending.iter().find(|(_, _, f)| *f == Flow::Unsent).map(|(_, e, _)| e.id.clone())
                    else {
                        return Ok(Put::DroppedNewest);
                    };
                    self.append(&Record::Drop(old.clone()), false)?;
                    self.remove(&old, false);
                    dropped = Some(old);
                }
            }
        }
        self.append(&Record::Put(e.clone()), true)?;
        self.insert(e);
        self.maybe_compact()?;
        Ok(match dropped {
            Some(id) => Put::StoredDroppingOldest(id),
            None => Put::Stored,
        })
    }

    /// The broker's session was lost (or never existed): every flow starts again.
    pub fn reset(&mut self) -> anyhow::Result<()> {
        if self.pending.iter().any(|(_, _, f)| *f != Flow::Unsent) {
            self.append(&Record::Reset(()), false)?;
            self.reset_flows();
        }
        Ok(())
    }

    /// Flows under way (sent, or received by the broker), oldest first, to resume after a
    /// reconnect to the same session.
    pub fn in_flight(&self) -> Vec<(Entry, Flow)> {
        self.pending.iter().filter(|(_, _, f)| *f != Flow::Unsent).map(|(_, e, f)| (e.clone(), *f)).collect()
    }

    /// Up to `limit` alerts not yet sent, oldest first, each given a free packet id (recorded
    /// before it is sent, so a crash resumes the flow under the same id).
    pub fn send_next(&mut self, limit: usize) -> anyhow::Result<Vec<(Entry, u16)>> {
        let mut out = vec![];
        let mut free = (1..=PACKET_IDS).filter(|p| !self.by_packet.contains_key(p)).collect::<VecDeque<_>>();
        let ids: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, _, f)| *f == Flow::Unsent)
            .take(limit.min(free.len()))
            .map(|(_, e, _)| e.id.clone())
            .collect();
        for id in ids {
            let pkid = free.pop_front().expect("limited to the free ids");
            self.append(&Record::Sent(id.clone(), pkid), false)?;
            self.set_flow(&id, Flow::Sent(pkid));
            let at = self.position(&id).expect("pending");
            out.push((self.pending[at].1.clone(), pkid));
        }
        Ok(out)
    }

    /// Alerts whose flow is under way.
    pub fn in_flight_count(&self) -> usize {
        self.by_packet.len()
    }

    /// PUBREC: the broker has the alert sent under `pkid`.
    pub fn received(&mut self, pkid: u16) -> anyhow::Result<()> {
        let Some(id) = self.by_packet.get(&pkid).cloned() else { return Ok(()) };
        self.append(&Record::Rec(id.clone()), false)?;
        self.set_flow(&id, Flow::Received(pkid));
        Ok(())
    }

    /// PUBCOMP: the alert sent under `pkid` is delivered and leaves the outbox; its id.
    /// Not fsync'd: the write survives the process dying, and if the machine loses power
    /// first, the flow is only completed again.
    pub fn completed(&mut self, pkid: u16) -> anyhow::Result<Option<String>> {
        let Some(id) = self.by_packet.get(&pkid).cloned() else { return Ok(None) };
        self.append(&Record::Ack(id.clone()), false)?;
        self.remove(&id, true);
        self.maybe_compact()?;
        Ok(Some(id))
    }

    /// Undelivered alerts.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        if self.records > 2 * (3 * self.pending.len() + self.delivered.len()) + self.slack
            && let Err(e) = self.compact()
        {
            // The log is whole without it (the old one stays until the rename): a full disk
            // must not also stop what was just recorded. Tried again at the next record.
            tracing::warn!("outbox: not compacted: {e:#}");
        }
        Ok(())
    }

    /// Rewrites the log with only what it holds (delivered ids, then pending alerts), through
    /// a temporary file and a rename, so a crash leaves the old or the new log whole.
    fn compact(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut records = 0;
        for id in &self.delivered {
            serde_json::to_writer(&mut out, &Record::Ack(id.clone()))?;
            out.push(b'\n');
            records += 1;
        }
        // An ack of an id never put only fills the remembered set on the next open.
        for (_, e, f) in &self.pending {
            let mut rs = vec![Record::Put(e.clone())];
            match f {
                Flow::Unsent => {}
                Flow::Sent(p) => rs.push(Record::Sent(e.id.clone(), *p)),
                Flow::Received(p) => rs.extend([Record::Sent(e.id.clone(), *p), Record::Rec(e.id.clone())]),
            }
            for r in rs {
                serde_json::to_writer(&mut out, &r)?;
                out.push(b'\n');
                records += 1;
            }
        }
        vigil_model::fsio::write_atomic(&self.path, &out).with_context(|| "outbox: compacting")?;
        self.file = open_append(&self.path)?;
        self.good_len = self.file.metadata().ok().map(|m| m.len());
        self.records = records;
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("outbox folder {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("outbox {}: cannot open it; check the state_dir's permissions", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry { id: format!("id{i}"), topic: "t".into(), payload: format!("{{\"n\":{i}}}") }
    }

    fn ids(o: &Outbox) -> Vec<String> {
        o.pending.iter().map(|(_, e, _)| e.id.clone()).collect()
    }

    /// Sends every unsent alert and completes the flows of `done`.
    fn deliver(o: &mut Outbox, done: &[&str]) {
        for (e, pkid) in o.send_next(usize::MAX).unwrap() {
            if done.contains(&e.id.as_str()) {
                o.received(pkid).unwrap();
                assert_eq!(o.completed(pkid).unwrap(), Some(e.id));
            }
        }
    }

    #[test]
    fn a_frame_alerted_again_under_a_new_time_is_a_duplicate_queued_delivered_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        // ULIDs: ten characters of time, then sixteen naming the frame.
        let at =
            |time: &str, frame: &str| Entry { id: format!("{time}{frame}"), topic: "t".into(), payload: "{}".into() };
        assert_eq!(o.put(at("01JAAAAAAA", "FRAMEAAAAAAAAAAA")).unwrap(), Put::Stored);
        assert_eq!(o.put(at("01JAAAAAAB", "FRAMEAAAAAAAAAAA")).unwrap(), Put::Duplicate, "queued");
        assert_eq!(o.put(at("01JAAAAAAB", "FRAMEBBBBBBBBBBB")).unwrap(), Put::Stored, "another frame");
        let first = "01JAAAAAAAFRAMEAAAAAAAAAAA";
        deliver(&mut o, &[first]);
        assert_eq!(o.put(at("01JAAAAAAC", "FRAMEAAAAAAAAAAA")).unwrap(), Put::Duplicate, "delivered");
        drop(o);
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        assert_eq!(o.put(at("01JAAAAAAD", "FRAMEAAAAAAAAAAA")).unwrap(), Put::Duplicate, "after reopen");
        assert_eq!(o.put(at("01JAAAAAAD", "FRAMEBBBBBBBBBBB")).unwrap(), Put::Duplicate);
    }

    #[test]
    fn survives_reopen_keeps_order_and_forgets_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        for i in 0..5 {
            assert_eq!(o.put(entry(i)).unwrap(), Put::Stored);
        }
        deliver(&mut o, &["id1", "id3"]);
        drop(o);
        // A torn line, as when the process dies mid-write.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"put\":{\"id\":\"x").unwrap();
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        assert_eq!(ids(&o), ["id0", "id2", "id4"]);
        // Delivered and queued ids are not stored twice.
        assert_eq!(o.put(entry(1)).unwrap(), Put::Duplicate);
        assert_eq!(o.put(entry(2)).unwrap(), Put::Duplicate);
    }

    #[test]
    fn flows_resume_under_the_same_packet_id_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        for i in 0..3 {
            o.put(entry(i)).unwrap();
        }
        let sent = o.send_next(2).unwrap();
        assert_eq!(sent.iter().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>(), ["id0", "id1"]);
        let (p0, p1) = (sent[0].1, sent[1].1);
        assert_ne!(p0, p1);
        o.received(p0).unwrap();
        drop(o);
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        assert_eq!(
            o.in_flight().into_iter().map(|(e, f)| (e.id, f)).collect::<Vec<_>>(),
            [("id0".to_owned(), Flow::Received(p0)), ("id1".to_owned(), Flow::Sent(p1))]
        );
        // A packet id in use is not given to another alert.
        let next = o.send_next(10).unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].1 != p0 && next[0].1 != p1);
        // The broker lost the session: every flow starts again.
        o.reset().unwrap();
        assert!(o.in_flight().is_empty());
        assert_eq!(o.send_next(10).unwrap().len(), 3);
    }

    #[test]
    fn the_bound_is_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut o = Outbox::open(&path, 2, FullPolicy::DropOldest).unwrap();
        o.put(entry(0)).unwrap();
        o.put(entry(1)).unwrap();
        assert_eq!(o.put(entry(2)).unwrap(), Put::StoredDroppingOldest("id0".into()));
        let mut n = Outbox::open(&dir.path().join("n.jsonl"), 1, FullPolicy::DropNewest).unwrap();
        n.put(entry(0)).unwrap();
        assert_eq!(n.put(entry(1)).unwrap(), Put::DroppedNewest);
        drop(o);
        let mut o = Outbox::open(&path, 2, FullPolicy::DropOldest).unwrap();
        assert_eq!(ids(&o), ["id1", "id2"]);
        // An alert in flight keeps its place: the oldest one not yet sent goes instead.
        o.send_next(1).unwrap();
        assert_eq!(o.put(entry(3)).unwrap(), Put::StoredDroppingOldest("id2".into()));
        o.send_next(1).unwrap();
        assert_eq!(o.put(entry(4)).unwrap(), Put::DroppedNewest);
        assert_eq!(ids(&o), ["id1", "id3"]);
    }

    #[test]
    fn compaction_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut o = Outbox::open(&path, 100_000, FullPolicy::DropOldest).unwrap();
        for i in 0..300 {
            o.put(entry(i)).unwrap_or_else(|e| panic!("{e}"));
            let id = format!("id{i}");
            if i % 3 != 0 {
                deliver(&mut o, &[id.as_str()]);
            }
        }
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        // Each delivered alert left 4 lines (put, sent, rec, ack), each waiting one 2.
        assert_eq!(lines(), 200 * 4 + 100 * 2);
        o.compact().unwrap();
        // Compacted: one line per remembered id, two per waiting alert (put, sent).
        assert_eq!(lines(), 200 + 100 * 2);
        drop(o);
        let o = Outbox::open(&path, 100_000, FullPolicy::DropOldest).unwrap();
        assert_eq!(o.len(), 100);
        assert_eq!(o.in_flight().len(), 100);
        assert_eq!(o.delivered.len(), 200);
    }
}
