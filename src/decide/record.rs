//! What the decide stage writes about each frame: the score message (`<camera>/score`, with
//! `mqtt.publish_scores`) and the line of the decisions log (`alerts.decisions_jsonl`).
//! `schema/score.schema.json` and `schema/decision.schema.json` describe them.

use serde::Serialize;

/// A scored frame on `<prefix>/<device>/<camera>/score` (QoS 0).
#[derive(Debug, Serialize)]
pub struct ScoreMessage<'a> {
    /// The camera.
    pub camera: &'a str,
    /// Where the frame came from (file path, topic, stream).
    pub source: &'a str,
    /// The frame's time, RFC 3339.
    pub frame_time: &'a str,
    /// The raw score, in the bundle's units.
    pub score: f32,
    /// The score on the bundle's calibrated scale from 0 to 1 (0.5 at the threshold).
    pub normalized_score: f32,
    /// The threshold in force.
    pub threshold: f32,
    /// Whether the score is over the threshold (whatever the cooldown decided).
    pub anomalous: bool,
    /// The product, for a conditional bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'a str>,
}

/// One line of the decisions log: a frame scored, or a frame refused before scoring.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DecisionRecord<'a> {
    /// A scored frame and what was decided.
    Scored {
        /// The camera.
        camera: &'a str,
        /// Where the frame came from.
        source: &'a str,
        /// The frame's time, RFC 3339.
        frame_time: &'a str,
        /// The raw score.
        score: f32,
        /// The normalized score.
        normalized_score: f32,
        /// The threshold in force.
        threshold: f32,
        /// `normal` or `anomalous`.
        result: &'static str,
        /// From the frame's arrival to the decision.
        latency_ms: f64,
        /// The alert's id, when the frame alerted.
        #[serde(skip_serializing_if = "Option::is_none")]
        alert: Option<&'a str>,
    },
    /// A frame that was not scored.
    Rejected {
        /// The camera.
        camera: &'a str,
        /// Where the frame came from.
        source: &'a str,
        /// Always `rejected`.
        result: &'static str,
        /// The kind of refusal (`decode`, `too_large`, `internal`, ...).
        kind: &'a str,
        /// Why, for the operator.
        error: &'a str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_records_keep_the_fields_the_json_had() {
        let m = ScoreMessage {
            camera: "cam1",
            source: "a.png",
            frame_time: "2026-12-07T10:00:00Z",
            score: 2.0,
            normalized_score: 1.5,
            threshold: 1.0,
            anomalous: true,
            class: None,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"camera": "cam1", "source": "a.png", "frame_time": "2026-12-07T10:00:00Z", "score": 2.0,
                   "normalized_score": 1.5, "threshold": 1.0, "anomalous": true})
        );
        assert_eq!(serde_json::to_value(ScoreMessage { class: Some("a"), ..m }).unwrap()["class"], "a");
        let scored = DecisionRecord::Scored {
            camera: "cam1",
            source: "a.png",
            frame_time: "2026-12-07T10:00:00Z",
            score: 2.0,
            normalized_score: 1.5,
            threshold: 1.0,
            result: "anomalous",
            latency_ms: 3.5,
            alert: Some("01J0000000000000000000000A"),
        };
        assert_eq!(
            serde_json::to_value(&scored).unwrap(),
            json!({"camera": "cam1", "source": "a.png", "frame_time": "2026-12-07T10:00:00Z", "score": 2.0,
                   "normalized_score": 1.5, "threshold": 1.0, "result": "anomalous", "latency_ms": 3.5,
                   "alert": "01J0000000000000000000000A"})
        );
        let rejected = DecisionRecord::Rejected {
            camera: "cam1",
            source: "b.png",
            result: "rejected",
            kind: "decode",
            error: "bad",
        };
        assert_eq!(
            serde_json::to_value(&rejected).unwrap(),
            json!({"camera": "cam1", "source": "b.png", "result": "rejected", "kind": "decode", "error": "bad"})
        );
    }
}
