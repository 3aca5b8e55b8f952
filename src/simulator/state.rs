//! The simulator's world: lists, members, merge fields, tags, webhooks, campaigns and the records
//! tests read back (campaign deliveries, webhook attempts). Plain data behind one mutex; every
//! operation is a synchronous function that never awaits while holding the lock.
//!
//! Members live per list in a `HashMap` keyed by subscriber hash, plus a change index
//! (`BTreeMap<last_changed µs, hash>`) so `since_last_changed` polling reads only the changed tail.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Timelike, Utc};
use md5::{Digest, Md5};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};

/// A subscriber hash: MD5 of the lower-cased address. Kept as bytes to keep 100k members small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberHash([u8; 16]);

impl SubscriberHash {
    /// Mailchimp's rule: lowercase hex MD5 of the lower-cased (trimmed) email address.
    pub fn of_email(email: &str) -> Self {
        let digest = Md5::digest(email.trim().to_lowercase().as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest);
        Self(bytes)
    }

    /// Parses 32 hex digits (any case); `None` for anything else.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let decoded = hex::decode(text).ok()?;
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&decoded);
        Some(Self(bytes))
    }

    /// A path segment may be the hash or, as the spec allows, the email address itself.
    pub fn from_path(segment: &str) -> Option<Self> {
        if segment.contains('@') {
            Some(Self::of_email(segment))
        } else {
            Self::parse_hex(segment)
        }
    }

    pub fn to_hex(self) -> String {
        self.hex().as_str().to_owned()
    }

    /// The hex form without allocating (member serialisation is a hot path).
    pub fn hex(self) -> StackStr<32> {
        let mut out = StackStr {
            buf: [0; 32],
            len: 32,
        };
        for (i, byte) in self.0.iter().enumerate() {
            out.buf[2 * i] = HEX[(byte >> 4) as usize];
            out.buf[2 * i + 1] = HEX[(byte & 0xf) as usize];
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A short ASCII string on the stack (ids, timestamps) that serialises as a JSON string.
#[derive(Clone, Copy)]
pub struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> Serialize for StackStr<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `digits` lowercase hex digits of `value` (the low ones), zero-padded.
fn hex_fixed<const N: usize>(value: u64, digits: usize, out: &mut StackStr<N>) {
    for i in 0..digits {
        let shift = 4 * (digits - 1 - i);
        out.buf[out.len + i] = HEX[((value >> shift) & 0xf) as usize];
    }
    out.len += digits;
}

/// Decimal, zero-padded to `width` digits.
fn dec_fixed<const N: usize>(value: u32, width: usize, out: &mut StackStr<N>) {
    let mut v = value;
    for i in (0..width).rev() {
        out.buf[out.len + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.len += width;
}

fn push_byte<const N: usize>(byte: u8, out: &mut StackStr<N>) {
    out.buf[out.len] = byte;
    out.len += 1;
}

/// Member status (read enum; `archived` is never written directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Subscribed,
    Unsubscribed,
    Cleaned,
    Pending,
    Transactional,
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Subscribed => "subscribed",
            Status::Unsubscribed => "unsubscribed",
            Status::Cleaned => "cleaned",
            Status::Pending => "pending",
            Status::Transactional => "transactional",
            Status::Archived => "archived",
        }
    }

    /// Parses the read enum (used by the `status` query filter).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "subscribed" => Status::Subscribed,
            "unsubscribed" => Status::Unsubscribed,
            "cleaned" => Status::Cleaned,
            "pending" => Status::Pending,
            "transactional" => Status::Transactional,
            "archived" => Status::Archived,
            _ => return None,
        })
    }

    /// Parses the write enum of POST/PUT/PATCH/batch bodies (no `archived`).
    pub fn parse_writable(text: &str) -> Option<Self> {
        Self::parse(text).filter(|s| *s != Status::Archived)
    }
}

/// Where a change came from, for webhook `sources` filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A subscriber acting (unsubscribe link, confirmation click).
    User,
    /// An account user or Mailchimp itself (bounce processing).
    Admin,
    /// A call to the Marketing API.
    Api,
}

/// Merge field types of the spec.
pub const MERGE_FIELD_TYPES: [&str; 11] = [
    "text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown",
    "birthday", "zip",
];

#[derive(Debug, Clone)]
pub struct MergeField {
    pub merge_id: u32,
    pub tag: String,
    pub name: String,
    pub kind: String,
    pub required: bool,
    pub public: bool,
    pub display_order: i64,
    pub default_value: String,
    pub help_text: String,
    pub options: Value,
}

impl MergeField {
    pub fn to_json(&self, list_id: &str) -> Value {
        json!({
            "merge_id": self.merge_id,
            "tag": self.tag,
            "name": self.name,
            "type": self.kind,
            "required": self.required,
            "default_value": self.default_value,
            "public": self.public,
            "display_order": self.display_order,
            "options": self.options,
            "help_text": self.help_text,
            "list_id": list_id,
            "_links": [],
        })
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub email: String,
    pub hash: SubscriberHash,
    /// Stable per-member sequence number; `web_id`, `unique_email_id` and `contact_id` derive from it.
    pub seq: u64,
    pub status: Status,
    pub email_type: &'static str,
    /// Values by merge id (only the ones set).
    pub merge_fields: Vec<(u32, Value)>,
    /// Tag ids (names live on the list).
    pub tags: Vec<u32>,
    pub last_changed: i64,
    pub timestamp_signup: Option<i64>,
    pub timestamp_opt: Option<i64>,
    /// Rarely set fields, boxed so 100k members stay small.
    pub extra: Option<Box<MemberExtra>>,
    pub vip: bool,
    pub source: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberExtra {
    pub unsubscribe_reason: Option<String>,
    pub ip_signup: Option<String>,
    pub ip_opt: Option<String>,
    pub language: Option<String>,
}

static NO_EXTRA: MemberExtra = MemberExtra {
    unsubscribe_reason: None,
    ip_signup: None,
    ip_opt: None,
    language: None,
};

impl MemberExtra {
    /// `None` when every field is unset.
    pub fn boxed(self) -> Option<Box<MemberExtra>> {
        (self != MemberExtra::default()).then(|| Box::new(self))
    }
}

impl Member {
    pub fn unique_email_id(&self) -> String {
        self.unique_email_id_str().as_str().to_owned()
    }

    pub fn unique_email_id_str(&self) -> StackStr<10> {
        let mut out = StackStr {
            buf: [0; 10],
            len: 0,
        };
        hex_fixed(mix(self.seq), 10, &mut out);
        out
    }

    pub fn contact_id(&self) -> StackStr<32> {
        let mut out = StackStr {
            buf: [0; 32],
            len: 0,
        };
        hex_fixed(mix(self.seq), 16, &mut out);
        hex_fixed(mix(self.seq ^ 0x5bd1_e995), 16, &mut out);
        out
    }

    pub fn web_id(&self) -> u64 {
        100_000 + self.seq
    }

    pub fn extra(&self) -> &MemberExtra {
        self.extra.as_deref().unwrap_or(&NO_EXTRA)
    }

    pub fn extra_mut(&mut self) -> &mut MemberExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn merge_value(&self, merge_id: u32) -> Option<&Value> {
        self.merge_fields
            .iter()
            .find(|(id, _)| *id == merge_id)
            .map(|(_, v)| v)
    }
}

/// A cheap integer mixer (splitmix64) so derived ids look random but are stable.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// subscribe, unsubscribe, profile, cleaned, upemail, campaign
    pub events: BTreeMap<&'static str, bool>,
    /// user, admin, api
    pub sources: BTreeMap<&'static str, bool>,
    /// Signs deliveries (`X-Mailchimp-Signature`); shown once, in the create response.
    pub signing_secret: String,
}

pub const WEBHOOK_EVENTS: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "profile",
    "cleaned",
    "upemail",
    "campaign",
];
pub const WEBHOOK_SOURCES: [&str; 3] = ["user", "admin", "api"];

impl Webhook {
    pub fn to_json(&self, list_id: &str) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "sources": self.sources,
            "list_id": list_id,
            "_links": [],
        })
    }

    /// Whether an event of `kind` caused by `source` goes to this webhook. Campaign events cannot be
    /// limited by source (research §6).
    pub fn wants(&self, kind: &str, source: Source) -> bool {
        if !self.events.get(kind).copied().unwrap_or(false) {
            return false;
        }
        if kind == "campaign" {
            return true;
        }
        let key = match source {
            Source::User => "user",
            Source::Admin => "admin",
            Source::Api => "api",
        };
        self.sources.get(key).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone)]
pub struct List {
    pub id: String,
    pub web_id: u64,
    /// The POST /lists body fields echoed back (name, contact, campaign_defaults, …).
    pub settings: Map<String, Value>,
    pub date_created: i64,
    pub merge_fields: Vec<MergeField>,
    pub next_merge_id: u32,
    pub members: MemberStore,
    /// last_changed (µs, unique across the simulator) → member; the polling index.
    pub changes: BTreeMap<i64, SubscriberHash>,
    /// Addresses removed with delete-permanent; they can never be re-added.
    pub forgotten: HashSet<SubscriberHash>,
    /// Tag id → name, and lower-cased name → id (tag names match case-insensitively).
    pub tag_names: HashMap<u32, String>,
    pub tag_ids: HashMap<String, u32>,
    pub webhooks: Vec<Webhook>,
    pub last_sub: Option<i64>,
    pub last_unsub: Option<i64>,
}

impl List {
    pub fn new(id: String, web_id: u64, settings: Map<String, Value>, now: i64) -> Self {
        let defaults = [
            ("FNAME", "First Name", "text"),
            ("LNAME", "Last Name", "text"),
            ("ADDRESS", "Address", "address"),
            ("PHONE", "Phone Number", "phone"),
        ];
        let merge_fields = defaults
            .iter()
            .enumerate()
            .map(|(i, (tag, name, kind))| MergeField {
                merge_id: i as u32 + 1,
                tag: (*tag).to_owned(),
                name: (*name).to_owned(),
                kind: (*kind).to_owned(),
                required: false,
                public: false,
                display_order: i as i64 + 2,
                default_value: String::new(),
                help_text: String::new(),
                options: default_merge_options(kind),
            })
            .collect();
        Self {
            id,
            web_id,
            settings,
            date_created: now,
            merge_fields,
            next_merge_id: defaults.len() as u32 + 1,
            members: MemberStore::default(),
            changes: BTreeMap::new(),
            forgotten: HashSet::new(),
            tag_names: HashMap::new(),
            tag_ids: HashMap::new(),
            webhooks: Vec::new(),
            last_sub: None,
            last_unsub: None,
        }
    }

    /// Events are only built when some webhook could receive them (they cost allocations).
    pub fn has_webhooks(&self) -> bool {
        !self.webhooks.is_empty()
    }

    pub fn merge_field_by_tag(&self, tag: &str) -> Option<&MergeField> {
        self.merge_fields
            .iter()
            .find(|f| f.tag.eq_ignore_ascii_case(tag))
    }

    pub fn tag_id(&self, name: &str) -> Option<u32> {
        self.tag_ids.get(&name.to_lowercase()).copied()
    }

    /// Returns the id of the tag `name`, creating it with a fresh id from `next_id` if needed.
    pub fn tag_id_or_create(&mut self, name: &str, next_id: &mut u32) -> u32 {
        if let Some(id) = self.tag_id(name) {
            return id;
        }
        *next_id += 1;
        let id = *next_id;
        self.tag_ids.insert(name.to_lowercase(), id);
        self.tag_names.insert(id, name.to_owned());
        id
    }

    /// Moves a member's position in the change index to `now`.
    pub fn touch(&mut self, hash: SubscriberHash, old: Option<i64>, now: i64) {
        if let Some(old) = old {
            self.changes.remove(&old);
        }
        self.changes.insert(now, hash);
    }

    /// List statistics. Unset dates are left out rather than sent as `""` (see [`without_nulls`]).
    pub fn stats(&self) -> Value {
        let (mut subscribed, mut unsubscribed, mut cleaned, mut total) = (0u64, 0u64, 0u64, 0u64);
        for member in self.members.values() {
            match member.status {
                Status::Subscribed => subscribed += 1,
                Status::Unsubscribed => unsubscribed += 1,
                Status::Cleaned => cleaned += 1,
                _ => {}
            }
            if member.status != Status::Archived {
                total += 1;
            }
        }
        without_nulls(json!({
            "member_count": subscribed,
            "total_contacts": total,
            "unsubscribe_count": unsubscribed,
            "cleaned_count": cleaned,
            "member_count_since_send": subscribed,
            "unsubscribe_count_since_send": unsubscribed,
            "cleaned_count_since_send": cleaned,
            "campaign_count": 0,
            "merge_field_count": self.merge_fields.len(),
            "avg_sub_rate": 0,
            "avg_unsub_rate": 0,
            "target_sub_rate": 0,
            "open_rate": 0,
            "click_rate": 0,
            "last_sub_date": self.last_sub.map(format_time),
            "last_unsub_date": self.last_unsub.map(format_time),
        }))
    }

    pub fn to_json(&self) -> Value {
        let mut body = self.settings.clone();
        body.insert("id".into(), json!(self.id));
        body.insert("web_id".into(), json!(self.web_id));
        body.insert("date_created".into(), json!(format_time(self.date_created)));
        body.insert("list_rating".into(), json!(0));
        body.insert(
            "subscribe_url_short".into(),
            json!(format!("http://eepurl.com/sim{}", self.web_id)),
        );
        body.insert(
            "subscribe_url_long".into(),
            json!(format!(
                "https://sim.list-manage.com/subscribe?u=sim&id={}",
                self.id
            )),
        );
        body.insert(
            "beamer_address".into(),
            json!(format!("us1-{}@inbound.mailchimp.com", self.id)),
        );
        body.insert("modules".into(), json!([]));
        body.insert("has_welcome".into(), json!(false));
        body.insert("stats".into(), self.stats());
        body.insert("_links".into(), json!([]));
        Value::Object(body)
    }

    /// `member` ready to serialise in the spec's member shape, or with `batch` as the spec's
    /// batch-subscribe result shows it (see [`MemberView`]).
    pub fn view<'a>(&'a self, member: &'a Member, batch: bool) -> MemberView<'a> {
        MemberView {
            list: self,
            member,
            batch,
        }
    }

    /// The member in the spec's member shape.
    pub fn member_json(&self, member: &Member) -> Value {
        serde_json::to_value(self.view(member, false)).unwrap_or(Value::Null)
    }

    /// The member as the spec's batch-subscribe result shows it.
    pub fn batch_member_json(&self, member: &Member) -> Value {
        serde_json::to_value(self.view(member, true)).unwrap_or(Value::Null)
    }
}

/// A member serialised straight from the state in the spec's member shape, without building a
/// `serde_json::Value` tree (responses of 500-1000 members are the simulator's hot path). Every
/// merge field of the list is present (`""` when unset), as Mailchimp answers; unset date-times are
/// left out. With `batch`, the fields the spec's batch-subscribe result (`BatchUpdateListMembers`)
/// does not declare are left out too.
pub struct MemberView<'a> {
    pub list: &'a List,
    pub member: &'a Member,
    pub batch: bool,
}

struct MergeFieldsView<'a>(&'a List, &'a Member);

impl Serialize for MergeFieldsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let MergeFieldsView(list, member) = self;
        let mut map = serializer.serialize_map(Some(list.merge_fields.len()))?;
        for field in &list.merge_fields {
            match member.merge_value(field.merge_id) {
                Some(value) => map.serialize_entry(&field.tag, value)?,
                None => map.serialize_entry(&field.tag, "")?,
            }
        }
        map.end()
    }
}

struct TagsView<'a>(&'a List, &'a Member);

impl Serialize for TagsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let TagsView(list, member) = self;
        // Mailchimp shows at most 50 tags (tags_count has the total).
        let shown = member.tags.len().min(50);
        let mut seq = serializer.serialize_seq(Some(shown))?;
        for id in member.tags.iter().take(shown) {
            let name = list.tag_names.get(id).map(String::as_str).unwrap_or("");
            seq.serialize_element(&TagView { id: *id, name })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct TagView<'a> {
    id: u32,
    name: &'a str,
}

#[derive(Serialize)]
struct MemberStatsView {
    avg_open_rate: u8,
    avg_click_rate: u8,
}

#[derive(Serialize)]
struct LocationView {
    latitude: u8,
    longitude: u8,
    gmtoff: u8,
    dstoff: u8,
    country_code: &'static str,
    timezone: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'static str>,
}

const EMPTY: [u8; 0] = [];

impl Serialize for MemberView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (list, m) = (self.list, self.member);
        let extra = m.extra();
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &m.hash.hex())?;
        map.serialize_entry("email_address", &m.email)?;
        map.serialize_entry("unique_email_id", &m.unique_email_id_str())?;
        map.serialize_entry("contact_id", &m.contact_id())?;
        if !self.batch {
            let full_name = [merge_str(list, m, "FNAME"), merge_str(list, m, "LNAME")]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            map.serialize_entry("full_name", &full_name)?;
            map.serialize_entry("web_id", &m.web_id())?;
        }
        map.serialize_entry("email_type", m.email_type)?;
        map.serialize_entry("status", m.status.as_str())?;
        if !self.batch {
            map.serialize_entry("unsubscribe_reason", &text(&extra.unsubscribe_reason))?;
            map.serialize_entry("consents_to_one_to_one_messaging", &true)?;
        }
        map.serialize_entry("merge_fields", &MergeFieldsView(list, m))?;
        map.serialize_entry("interests", &serde_json::Map::new())?;
        map.serialize_entry(
            "stats",
            &MemberStatsView {
                avg_open_rate: 0,
                avg_click_rate: 0,
            },
        )?;
        map.serialize_entry("ip_signup", &text(&extra.ip_signup))?;
        if let Some(t) = m.timestamp_signup {
            map.serialize_entry("timestamp_signup", &time_str(t))?;
        }
        map.serialize_entry("ip_opt", &text(&extra.ip_opt))?;
        if let Some(t) = m.timestamp_opt {
            map.serialize_entry("timestamp_opt", &time_str(t))?;
        }
        map.serialize_entry("member_rating", &2)?;
        map.serialize_entry("last_changed", &time_str(m.last_changed))?;
        map.serialize_entry("language", &text(&extra.language))?;
        map.serialize_entry("vip", &m.vip)?;
        map.serialize_entry("email_client", "")?;
        let location = LocationView {
            latitude: 0,
            longitude: 0,
            gmtoff: 0,
            dstoff: 0,
            country_code: "",
            timezone: "",
            region: (!self.batch).then_some(""),
        };
        map.serialize_entry("location", &location)?;
        if !self.batch {
            map.serialize_entry("marketing_permissions", &EMPTY)?;
            map.serialize_entry("source", m.source)?;
        }
        map.serialize_entry("tags_count", &m.tags.len())?;
        map.serialize_entry("tags", &TagsView(list, m))?;
        map.serialize_entry("list_id", &list.id)?;
        map.serialize_entry("_links", &EMPTY)?;
        map.end()
    }
}

/// Members of one list: a slab of members plus an index by subscriber hash. Growing a `Vec` of
/// large entries reallocates in place where it can, where a `HashMap` of members would copy every
/// entry on each resize; the index itself stays small (hash → slot).
#[derive(Debug, Clone, Default)]
pub struct MemberStore {
    index: HashMap<SubscriberHash, u32>,
    slots: Vec<Member>,
}

impl MemberStore {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains_key(&self, hash: &SubscriberHash) -> bool {
        self.index.contains_key(hash)
    }

    pub fn get(&self, hash: &SubscriberHash) -> Option<&Member> {
        self.index
            .get(hash)
            .and_then(|i| self.slots.get(*i as usize))
    }

    pub fn get_mut(&mut self, hash: &SubscriberHash) -> Option<&mut Member> {
        let slot = *self.index.get(hash)? as usize;
        self.slots.get_mut(slot)
    }

    /// Inserts or replaces the member stored under `hash` (which must be `member.hash`).
    pub fn insert(&mut self, hash: SubscriberHash, member: Member) {
        debug_assert_eq!(hash, member.hash);
        match self.index.get(&hash) {
            Some(slot) => self.slots[*slot as usize] = member,
            None => {
                self.index.insert(hash, self.slots.len() as u32);
                self.slots.push(member);
            }
        }
    }

    pub fn remove(&mut self, hash: &SubscriberHash) -> Option<Member> {
        let slot = self.index.remove(hash)? as usize;
        let member = self.slots.swap_remove(slot);
        if let Some(moved) = self.slots.get(slot) {
            self.index.insert(moved.hash, slot as u32);
        }
        Some(member)
    }

    pub fn values(&self) -> impl Iterator<Item = &Member> {
        self.slots.iter()
    }
}

fn merge_str(list: &List, member: &Member, tag: &str) -> String {
    list.merge_field_by_tag(tag)
        .and_then(|f| member.merge_value(f.merge_id))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Drops top-level `null`s. Unset date-times are omitted: Mailchimp sends `""`, which its own
/// spec's `date-time` format rejects (and the spec-proxy with it), so absence is the faithful-enough
/// choice a client must handle anyway.
pub fn without_nulls(mut value: Value) -> Value {
    if let Some(obj) = value.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
    }
    value
}

pub fn default_merge_options(kind: &str) -> Value {
    match kind {
        "address" => json!({"default_country": 164}),
        "phone" => json!({"phone_format": "none"}),
        "text" => json!({"size": 25}),
        _ => json!({}),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignStatus {
    Save,
    Schedule,
    Sent,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Save => "save",
            CampaignStatus::Schedule => "schedule",
            CampaignStatus::Sent => "sent",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: String,
    pub web_id: u64,
    pub kind: String,
    pub list_id: String,
    pub segment_opts: Option<Value>,
    pub settings: Map<String, Value>,
    pub tracking: Value,
    pub status: CampaignStatus,
    pub html: Option<String>,
    pub plain_text: Option<String>,
    pub create_time: i64,
    pub send_time: Option<i64>,
    pub emails_sent: u64,
}

/// A recorded campaign delivery (`GET /_sim/deliveries`).
#[derive(Debug, Clone)]
pub struct CampaignDelivery {
    pub campaign_id: String,
    pub email: String,
}

/// A recorded test send (`POST /campaigns/{id}/actions/test`).
#[derive(Debug, Clone)]
pub struct TestSend {
    pub campaign_id: String,
    pub email: String,
    pub send_type: String,
}

/// A webhook event waiting to be matched to the list's webhooks.
#[derive(Debug, Clone)]
pub struct Event {
    pub list_id: String,
    pub kind: &'static str,
    pub source: Source,
    /// The address the event is about (for the delivery log).
    pub email: String,
    /// Form pairs after `type` and `fired_at`, e.g. `("data[email]", "a@b.example")`.
    pub data: Vec<(String, String)>,
    pub fired_at: i64,
}

/// The whole mutable state.
#[derive(Debug, Default)]
pub struct World {
    pub lists: HashMap<String, List>,
    pub list_order: Vec<String>,
    pub campaigns: HashMap<String, Campaign>,
    pub campaign_order: Vec<String>,
    pub deliveries: Vec<CampaignDelivery>,
    pub test_sends: Vec<TestSend>,
    pub clock: Clock,
    pub next_seq: u64,
    pub next_tag_id: u32,
    pub next_web_id: u64,
    /// Constant Contact's account (`/v3`), on the same clock.
    pub cc: super::constant_contact::state::CcWorld,
}

impl World {
    pub fn list(&self, list_id: &str) -> Option<&List> {
        self.lists.get(list_id)
    }

    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn next_web_id(&mut self) -> u64 {
        self.next_web_id += 1;
        10_000 + self.next_web_id
    }
}

/// A strictly increasing microsecond clock: every change gets a distinct `last_changed`, even
/// within the same second, so the change index never has ties.
///
/// `offset` shifts simulated time forward (`POST /_sim/clock/advance`), so tests can make changes
/// land in later seconds without sleeping.
#[derive(Debug, Default)]
pub struct Clock {
    last: i64,
    offset: i64,
}

impl Clock {
    pub fn now(&mut self) -> i64 {
        let wall = Utc::now().timestamp_micros() + self.offset;
        self.last = wall.max(self.last + 1);
        self.last
    }

    /// Moves simulated time forward by `micros`.
    pub fn advance(&mut self, micros: i64) {
        self.offset += micros.max(0);
    }
}

/// Mailchimp's timestamp form: `2015-10-21T15:41:36+00:00` (whole seconds).
pub fn format_time(micros: i64) -> String {
    time_str(micros).as_str().to_owned()
}

/// [`format_time`] without allocating, for years 0–9999 (else chrono's own formatting).
pub fn time_str(micros: i64) -> StackStr<32> {
    let t = to_datetime(micros);
    let mut out = StackStr {
        buf: [0; 32],
        len: 0,
    };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        let text = t.to_rfc3339_opts(SecondsFormat::Secs, false);
        let n = text.len().min(32);
        out.buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        out.len = n;
        return out;
    }
    dec_fixed(year as u32, 4, &mut out);
    push_byte(b'-', &mut out);
    dec_fixed(t.month(), 2, &mut out);
    push_byte(b'-', &mut out);
    dec_fixed(t.day(), 2, &mut out);
    push_byte(b'T', &mut out);
    dec_fixed(t.hour(), 2, &mut out);
    push_byte(b':', &mut out);
    dec_fixed(t.minute(), 2, &mut out);
    push_byte(b':', &mut out);
    dec_fixed(t.second(), 2, &mut out);
    for b in *b"+00:00" {
        push_byte(b, &mut out);
    }
    out
}

/// The webhook `fired_at` form: `2009-03-26 21:35:57` (UTC).
pub fn format_fired_at(micros: i64) -> String {
    to_datetime(micros).format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn to_datetime(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// Parses an ISO 8601 / RFC 3339 timestamp (also `…Z`, and a bare date-time taken as UTC) to µs.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    // A '+' in a query string often arrives decoded as a space.
    if let Ok(t) = DateTime::parse_from_rfc3339(&text.replacen(' ', "+", 1)) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// Random lowercase hex id of `len` digits (list, webhook and campaign ids are 10).
pub fn random_id(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        out.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    out.truncate(len);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_hash_is_md5_of_lowercased_email() {
        // md5("urist.mcvankab@freddiesjokes.com"), the example in Mailchimp's docs.
        let hash = SubscriberHash::of_email(" Urist.McVankab@FreddiesJokes.com ");
        assert_eq!(hash.to_hex(), "62eeb292278cc15f5817cb78f7790b08");
        assert_eq!(
            SubscriberHash::parse_hex(&hash.to_hex().to_uppercase()),
            Some(hash)
        );
        assert_eq!(
            SubscriberHash::from_path("urist.mcvankab@freddiesjokes.com"),
            Some(hash)
        );
        assert_eq!(SubscriberHash::parse_hex("xyz"), None);
    }

    fn member(email: &str) -> Member {
        Member {
            email: email.into(),
            hash: SubscriberHash::of_email(email),
            seq: 1,
            status: Status::Subscribed,
            email_type: "html",
            merge_fields: Vec::new(),
            tags: Vec::new(),
            last_changed: 0,
            timestamp_signup: None,
            timestamp_opt: None,
            extra: None,
            vip: false,
            source: "API - Generic",
        }
    }

    #[test]
    fn member_store_keeps_its_index_right_after_removals() {
        let mut store = MemberStore::default();
        let emails = ["a@x.org", "b@x.org", "c@x.org", "d@x.org"];
        for e in emails {
            store.insert(SubscriberHash::of_email(e), member(e));
        }
        let removed = store.remove(&SubscriberHash::of_email("a@x.org")).unwrap();
        assert_eq!(removed.email, "a@x.org");
        assert!(store.remove(&SubscriberHash::of_email("a@x.org")).is_none());
        assert_eq!(store.len(), 3);
        for e in &emails[1..] {
            assert_eq!(
                store
                    .get(&SubscriberHash::of_email(e))
                    .map(|m| m.email.as_str()),
                Some(*e)
            );
        }
        let mut replaced = member("c@x.org");
        replaced.vip = true;
        store.insert(replaced.hash, replaced);
        assert_eq!(store.len(), 3);
        assert!(store.get(&SubscriberHash::of_email("c@x.org")).unwrap().vip);
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let mut clock = Clock::default();
        let mut last = 0;
        for _ in 0..10_000 {
            let now = clock.now();
            assert!(now > last);
            last = now;
        }
    }

    #[test]
    fn advanced_clock_jumps_forward() {
        let mut clock = Clock::default();
        let before = clock.now();
        clock.advance(60_000_000);
        assert!(clock.now() >= before + 60_000_000);
    }

    #[test]
    fn fast_formatting_matches_chrono() {
        for micros in [
            0,
            1_234_567,
            1_445_442_096_000_000,
            4_102_444_799_999_999,
            -86_400_000_000,
        ] {
            let chrono = to_datetime(micros).to_rfc3339_opts(SecondsFormat::Secs, false);
            assert_eq!(time_str(micros).as_str(), chrono);
        }
        let hash = SubscriberHash::of_email("a@b.org");
        assert_eq!(hash.hex().as_str(), hex::encode(hash.0));
    }

    #[test]
    fn times_round_trip_in_mailchimp_form() {
        let t = parse_time("2015-10-21T15:41:36+00:00").unwrap();
        assert_eq!(format_time(t), "2015-10-21T15:41:36+00:00");
        assert_eq!(format_fired_at(t), "2015-10-21 15:41:36");
        assert_eq!(parse_time("2015-10-21T15:41:36Z"), Some(t));
        assert_eq!(parse_time("2015-10-21T15:41:36 00:00"), Some(t));
        assert_eq!(parse_time("2015-10-21 15:41:36"), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn webhook_source_filter_spares_campaign_events() {
        let hook = Webhook {
            id: "w".into(),
            url: "http://x".into(),
            events: WEBHOOK_EVENTS.iter().map(|e| (*e, true)).collect(),
            sources: [("user", true), ("admin", true), ("api", false)]
                .into_iter()
                .collect(),
            signing_secret: String::new(),
        };
        assert!(!hook.wants("subscribe", Source::Api));
        assert!(hook.wants("subscribe", Source::User));
        assert!(hook.wants("campaign", Source::Api));
    }
}
