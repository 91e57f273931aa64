//! The MQTT contract of one box: every topic name under `<prefix>/<device>`, in and out, and
//! the availability payloads.

/// Retained on `available` after each connect, once frames and control topics are subscribed.
pub const ONLINE: &str = "online";
/// The Last-Will on `available`: the broker publishes it when vigil vanishes (crash, power or
/// network loss).
pub const OFFLINE: &str = "offline";
/// Retained on `available` at a clean stop.
pub const STOPPED: &str = "stopped";

/// Topic names under `<prefix>/<device>`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics for `prefix` and `device`.
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics { base: format!("{}/{device}", prefix.trim_end_matches('/')) }
    }
    /// `<prefix>/<device>/available`.
    pub fn available(&self) -> String {
        format!("{}/available", self.base)
    }
    /// `<prefix>/<device>/stats`.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    /// `<prefix>/<device>/<camera>/<leaf>` (`anomaly`, `snapshot`, `score`, `threshold/state`,
    /// `feedback/state`).
    pub fn camera(&self, camera: &str, leaf: &str) -> String {
        format!("{}/{camera}/{leaf}", self.base)
    }
    /// The camera of `<prefix>/<device>/<camera>/<leaf>`.
    fn camera_of<'a>(&self, topic: &'a str, leaf: &str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let camera = rest.strip_suffix(leaf)?.strip_suffix('/')?;
        (!camera.is_empty() && !camera.contains('/')).then_some(camera)
    }
    /// The filter of threshold changes for every camera.
    pub fn threshold_set_filter(&self) -> String {
        format!("{}/+/threshold/set", self.base)
    }
    /// The camera of a threshold-change topic.
    pub fn threshold_set_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.camera_of(topic, "threshold/set")
    }
    /// The filter of bundle rollouts for every camera.
    pub fn bundle_set_filter(&self) -> String {
        format!("{}/+/bundle/set", self.base)
    }
    /// The camera of a bundle rollout topic.
    pub fn bundle_set_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.camera_of(topic, "bundle/set")
    }
    /// The filter of verdicts for every camera.
    pub fn feedback_filter(&self) -> String {
        format!("{}/+/feedback", self.base)
    }
    /// The camera of a verdict topic.
    pub fn feedback_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.camera_of(topic, "feedback")
    }
}

/// Whether some topic matches both filters.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (unshared(a).split('/'), unshared(b).split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == y || x == "+" || y == "+" => {}
            _ => return false,
        }
    }
}

/// The filter a shared subscription (`$share/<group>/<filter>`: the broker hands each message
/// to one member of the group) matches topics with; any other filter as it is.
pub fn unshared(filter: &str) -> &str {
    match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((group, inner)) if !group.is_empty() => inner,
        _ => filter,
    }
}

/// Whether `topic` matches the MQTT filter `filter` (a shared subscription by its inner
/// filter).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in unshared(filter).split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_subscription_matches_by_its_inner_filter() {
        assert_eq!(unshared("$share/vigil/factory/+/frame"), "factory/+/frame");
        assert_eq!(unshared("factory/+/frame"), "factory/+/frame");
        assert!(topic_matches("$share/boxes/factory/+/frame", "factory/cam1/frame"));
        assert!(!topic_matches("$share/boxes/factory/+/frame", "$share/boxes/factory/cam1/frame"));
        assert!(filters_overlap("$share/g/line1/#", "line1/cam/frame"));
    }

    #[test]
    fn filters_overlap_when_one_topic_fits_both() {
        assert!(filters_overlap("line1/#", "line1/cam/frame"));
        assert!(filters_overlap("line1/+/part", "+/st3/part"));
        assert!(filters_overlap("vigil/#", "vigil"));
        assert!(!filters_overlap("line1/+/part", "line1/st3/frame"));
        assert!(!filters_overlap("line1/part", "line1/part/x"));
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(topic_matches("factory/+/camera/+/frame", "factory/l1/camera/c7/frame"));
        assert!(!topic_matches("factory/+/camera/+/frame", "factory/l1/camera/c7/frame/x"));
        assert!(topic_matches("factory/#", "factory/a/b"));
        assert!(!topic_matches("a/b", "a"));
        let t = Topics::new("vigil", "box1");
        assert_eq!(t.threshold_set_camera("vigil/box1/cam2/threshold/set"), Some("cam2"));
        assert_eq!(t.threshold_set_camera("vigil/box1/a/b/threshold/set"), None);
        assert_eq!(t.feedback_camera("vigil/box1/cam2/feedback"), Some("cam2"));
        assert_eq!(t.feedback_camera("vigil/box1/cam2/feedback/state"), None);
    }
}
