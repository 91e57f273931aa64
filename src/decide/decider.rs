//! Cooldown and hysteresis per camera (or per product on a camera): whether a frame above its
//! threshold alerts, is held back, or re-arms; and the anomalous region read from the map.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ndarray::ArrayView2;

use crate::alert::Region;
use crate::frame::Area;

/// What to do with a scored frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Below the threshold.
    Normal,
    /// Anomalous and alerted; `suppressed_before` anomalous frames were held back since the
    /// previous alert.
    Alert {
        /// Anomalous frames not alerted since the previous alert.
        suppressed_before: u64,
    },
    /// Anomalous, but within the cooldown or not yet re-armed.
    Suppressed,
}

#[derive(Debug, Default, Clone)]
struct CameraState {
    last_alert: Option<Instant>,
    /// Hysteresis: false after an alert until a score falls below the re-arm level.
    disarmed: bool,
    suppressed: u64,
}

/// Per-camera decision state.
#[derive(Debug, Default)]
pub struct Decider {
    cameras: HashMap<String, CameraState>,
}

/// A camera's decision state as it was before a frame, to put back with [`Decider::restore`].
#[derive(Debug, Clone)]
pub struct Saved(Option<CameraState>);

impl Decider {
    /// The state of `camera` now.
    pub fn save(&self, camera: &str) -> Saved {
        Saved(self.cameras.get(camera).cloned())
    }

    /// Puts back what [`Decider::save`] returned: an alert that could not be stored is taken
    /// back, so that the frame, scored again, alerts then instead of being held back by its
    /// own first decision (cooldown, hysteresis).
    pub fn restore(&mut self, camera: &str, saved: Saved) {
        match saved.0 {
            Some(s) => self.cameras.insert(camera.to_owned(), s),
            None => self.cameras.remove(camera),
        };
    }

    /// Decides for one frame of `camera`.
    pub fn decide(
        &mut self,
        camera: &str,
        score: f32,
        threshold: f32,
        cooldown: Duration,
        hysteresis: f32,
        now: Instant,
    ) -> Decision {
        let s = self.cameras.entry(camera.to_owned()).or_default();
        // A NaN score is not "normal": treat it as anomalous so a broken model is noticed.
        let anomalous = score > threshold || score.is_nan();
        if !anomalous {
            if score < threshold * (1.0 - hysteresis) || hysteresis == 0.0 {
                s.disarmed = false;
            }
            return Decision::Normal;
        }
        let cooling = s.last_alert.is_some_and(|t| now.duration_since(t) < cooldown);
        if cooling || s.disarmed {
            s.suppressed += 1;
            return Decision::Suppressed;
        }
        s.last_alert = Some(now);
        s.disarmed = hysteresis > 0.0;
        Decision::Alert { suppressed_before: std::mem::take(&mut s.suppressed) }
    }
}

/// The bounding box (in frame pixels) and area share of the map above `threshold`. When no
/// pixel is above it (a mean or top-k score can exceed the threshold without any single
/// pixel doing so), the box is the hottest pixel's.
pub fn region(map: ArrayView2<'_, f32>, threshold: f32, area: Area) -> Region {
    let (mh, mw) = map.dim();
    let (mut x0, mut y0, mut x1, mut y1, mut n) = (usize::MAX, usize::MAX, 0, 0, 0usize);
    let mut hottest = (0, 0, f32::NEG_INFINITY);
    for ((y, x), &v) in map.indexed_iter() {
        if v > threshold {
            n += 1;
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        if v > hottest.2 {
            hottest = (y, x, v);
        }
    }
    if n == 0 {
        (x0, y0, x1, y1) = (hottest.1, hottest.0, hottest.1, hottest.0);
    }
    // Map pixel edges to frame pixels.
    let sx = area.w as f64 / mw.max(1) as f64;
    let sy = area.h as f64 / mh.max(1) as f64;
    let fx0 = area.x + (x0 as f64 * sx).floor() as u32;
    let fy0 = area.y + (y0 as f64 * sy).floor() as u32;
    let fx1 = area.x + ((x1 + 1) as f64 * sx).ceil().min(area.w as f64) as u32;
    let fy1 = area.y + ((y1 + 1) as f64 * sy).ceil().min(area.h as f64) as u32;
    Region { bbox: [fx0, fy0, fx1 - fx0, fy1 - fy0], area_fraction: n as f32 / (mh * mw).max(1) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn an_alert_taken_back_lets_the_same_frame_alert_again() {
        let mut d = Decider::default();
        let (now, cooldown) = (Instant::now(), Duration::from_secs(60));
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 0.5, 1.0, cooldown, 0.1, now), Decision::Normal, "re-armed");
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, now), Decision::Suppressed, "cooling down");
        let later = now + cooldown;
        let saved = d.save("c");
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Alert { suppressed_before: 1 });
        // Without taking it back, the frame scored again would be held back by its own alert.
        let mut kept = Decider { cameras: d.cameras.clone() };
        assert_eq!(kept.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Suppressed);
        d.restore("c", saved);
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Alert { suppressed_before: 1 });
        // A camera's first alert, taken back, leaves no state.
        let saved = d.save("new");
        assert_eq!(d.decide("new", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
        d.restore("new", saved);
        assert_eq!(d.decide("new", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
    }

    #[test]
    fn every_anomalous_frame_alerts_without_cooldown() {
        let mut d = Decider::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(d.decide("c", 2.0, 1.0, Duration::ZERO, 0.0, now), Decision::Alert { suppressed_before: 0 });
        }
        assert_eq!(d.decide("c", 0.5, 1.0, Duration::ZERO, 0.0, now), Decision::Normal);
    }

    #[test]
    fn cooldown_holds_back_and_counts() {
        let mut d = Decider::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(1)), Decision::Suppressed);
        assert_eq!(d.decide("other", 2.0, 1.0, cd, 0.0, t0), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(2)), Decision::Suppressed);
        assert_eq!(
            d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(11)),
            Decision::Alert { suppressed_before: 2 }
        );
    }

    #[test]
    fn hysteresis_rearms_only_well_below_the_threshold() {
        let mut d = Decider::default();
        let t = Instant::now();
        assert!(matches!(d.decide("c", 2.0, 1.0, Duration::ZERO, 0.2, t), Decision::Alert { .. }));
        assert_eq!(d.decide("c", 0.9, 1.0, Duration::ZERO, 0.2, t), Decision::Normal);
        assert_eq!(d.decide("c", 1.1, 1.0, Duration::ZERO, 0.2, t), Decision::Suppressed);
        assert_eq!(d.decide("c", 0.7, 1.0, Duration::ZERO, 0.2, t), Decision::Normal);
        assert_eq!(d.decide("c", 1.1, 1.0, Duration::ZERO, 0.2, t), Decision::Alert { suppressed_before: 1 });
    }

    #[test]
    fn region_maps_to_frame_pixels() {
        let mut m = Array2::<f32>::zeros((4, 4));
        m[[1, 2]] = 5.0;
        m[[2, 3]] = 5.0;
        let r = region(m.view(), 1.0, Area { x: 100, y: 10, w: 40, h: 80 });
        assert_eq!(r.bbox, [120, 30, 20, 40]);
        assert!((r.area_fraction - 2.0 / 16.0).abs() < 1e-6);
        let none = region(Array2::<f32>::zeros((4, 4)).view(), 1.0, Area { x: 0, y: 0, w: 4, h: 4 });
        assert_eq!(none.bbox[2..], [1, 1]);
        assert_eq!(none.area_fraction, 0.0);
    }
}
