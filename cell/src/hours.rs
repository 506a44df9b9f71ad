//! Vendors' opening hours: a weekly schedule in the vendor's own time zone.
//!
//! A vendor without hours is always open (as every vendor was before hours
//! existed). Checks take the instant as an argument, so apply can use the
//! command's timestamp and every node reaches the same verdict.
//!
//! The time-zone rules are the ones compiled into the binary (chrono-tz);
//! nodes of one cell run one build, so they share them.

use std::str::FromStr;

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// At most this many spans a week (three a day, and some to spare).
pub const MAX_SPANS: usize = 28;
const MINUTES_PER_DAY: u16 = 24 * 60;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Hours as the API takes and shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoursInput {
    /// IANA time zone of the vendor, e.g. `America/New_York`.
    pub timezone: String,
    /// When the vendor is open each week, in its local time.
    pub weekly: Vec<SpanInput>,
}

/// One opening: `day` from `open` to `close` (`HH:MM`, local time). A close
/// at or before the open runs past midnight into the next day; `24:00`
/// closes at midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanInput {
    /// mon | tue | wed | thu | fri | sat | sun
    pub day: String,
    pub open: String,
    pub close: String,
}

/// Hours as the state holds them: parsed once, at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpeningHours {
    timezone: String,
    weekly: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    /// 0 = Monday.
    day: u8,
    /// Minutes after local midnight.
    open: u16,
    /// Minutes after local midnight, 1..=1440; at or before `open` means
    /// the next day.
    close: u16,
}

impl Span {
    fn overnight(&self) -> bool {
        self.close <= self.open
    }
}

fn hhmm(field: &str, s: &str, allow_midnight_end: bool) -> Result<u16, String> {
    let bad = || {
        format!(
            "{field} must be HH:MM (00:00-23:59{}), got {s:?}",
            if allow_midnight_end { " or 24:00" } else { "" }
        )
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_midnight_end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn show(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl OpeningHours {
    /// Validates hours from the API; the error says what is wrong.
    pub fn parse(input: &HoursInput) -> Result<Self, String> {
        if input.timezone.is_empty() || input.timezone.len() > 64 {
            return Err("hours.timezone must be an IANA time zone name".into());
        }
        Tz::from_str(&input.timezone)
            .map_err(|_| format!("hours.timezone: unknown time zone {:?}", input.timezone))?;
        if input.weekly.is_empty() {
            return Err(
                "hours.weekly needs at least one span (leave hours out, or null, for always open)"
                    .into(),
            );
        }
        if input.weekly.len() > MAX_SPANS {
            return Err(format!("hours.weekly has more than {MAX_SPANS} spans"));
        }
        let mut weekly = Vec::with_capacity(input.weekly.len());
        for s in &input.weekly {
            let day = DAYS.iter().position(|d| *d == s.day).ok_or_else(|| {
                format!(
                    "hours.weekly day must be one of {}, got {:?}",
                    DAYS.join(", "),
                    s.day
                )
            })?;
            let open = hhmm("open", &s.open, false)?;
            let close = hhmm("close", &s.close, true)?;
            if open == close {
                return Err(format!(
                    "a span from {} to {} is empty; 00:00 to 24:00 is all day",
                    s.open, s.close
                ));
            }
            weekly.push(Span {
                day: day as u8,
                open,
                close,
            });
        }
        weekly.sort_by_key(|s| (s.day, s.open));
        Ok(Self {
            timezone: input.timezone.clone(),
            weekly,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "timezone": self.timezone,
            "weekly": self.weekly.iter().map(|s| json!({
                // A stored day past Sunday (a damaged record) shows as
                // such instead of stopping every view of the vendor.
                "day": DAYS.get(usize::from(s.day)).copied().unwrap_or("invalid"), "open": show(s.open), "close": show(s.close),
            })).collect::<Vec<_>>(),
        })
    }

    fn tz(&self) -> Tz {
        // Validated when parsed; a name this build does not know (state
        // written by a newer build) falls back to UTC rather than failing.
        Tz::from_str(&self.timezone).unwrap_or(Tz::UTC)
    }

    /// The openings that start on local `date`, as instants `[open, close)`.
    /// Wall-clock times map to instants one way for both checks below (a
    /// time skipped by a daylight-saving jump counts from the end of the
    /// gap, a repeated one at its first pass), so "open at" and "next
    /// change" always agree.
    fn openings_on(&self, tz: &Tz, date: NaiveDate) -> impl Iterator<Item = (i64, i64)> + '_ {
        let tz = *tz;
        let day = date.weekday().num_days_from_monday() as u8;
        self.weekly
            .iter()
            .filter(move |s| s.day == day)
            .filter_map(move |s| {
                let close_date = if s.overnight() || s.close == MINUTES_PER_DAY {
                    date + Duration::days(1)
                } else {
                    date
                };
                Some((
                    instant(&tz, date, s.open)?,
                    instant(&tz, close_date, s.close % MINUTES_PER_DAY)?,
                ))
            })
    }

    /// Whether the vendor is open at `at_ms` (Unix milliseconds).
    pub fn is_open_at(&self, at_ms: i64) -> bool {
        let Some(utc) = Utc.timestamp_millis_opt(at_ms).single() else {
            return false;
        };
        let tz = self.tz();
        let today = utc.with_timezone(&tz).date_naive();
        // What opened today, or yesterday and runs past midnight.
        [today - Duration::days(1), today].into_iter().any(|date| {
            self.openings_on(&tz, date)
                .any(|(open, close)| open <= at_ms && at_ms < close)
        })
    }

    /// The next instant after `at_ms` when the vendor opens or closes,
    /// within the coming eight days (none for hours that never change).
    pub fn next_change_after(&self, at_ms: i64) -> Option<i64> {
        let tz = self.tz();
        let now = Utc.timestamp_millis_opt(at_ms).single()?;
        let today = now.with_timezone(&tz).date_naive();
        let open_now = self.is_open_at(at_ms);
        let mut edges: Vec<i64> = (-1..=8)
            .flat_map(|offset| self.openings_on(&tz, today + Duration::days(offset)))
            .flat_map(|(open, close)| [open, close])
            .collect();
        edges.sort_unstable();
        edges
            .into_iter()
            .filter(|&t| t > at_ms)
            .find(|&t| self.is_open_at(t) != open_now)
    }

    /// `open_now` and `next_change_at` for a vendor's view.
    pub fn status_json(hours: Option<&Self>, at_ms: i64) -> (bool, Option<i64>) {
        match hours {
            None => (true, None),
            Some(h) => (h.is_open_at(at_ms), h.next_change_after(at_ms)),
        }
    }
}

/// The instant a local wall-clock time falls on; a time skipped by a
/// daylight-saving jump counts from the first minute after the gap.
fn instant(tz: &Tz, date: NaiveDate, minute: u16) -> Option<i64> {
    let time = NaiveTime::from_hms_opt((minute / 60) as u32, (minute % 60) as u32, 0)?;
    let mut local = date.and_time(time);
    for _ in 0..180 {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return Some(t.timestamp_millis()),
            LocalResult::Ambiguous(first, _) => return Some(first.timestamp_millis()),
            LocalResult::None => local += Duration::minutes(1),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(tz: &str, spans: &[(&str, &str, &str)]) -> OpeningHours {
        OpeningHours::parse(&HoursInput {
            timezone: tz.into(),
            weekly: spans
                .iter()
                .map(|(d, o, c)| SpanInput {
                    day: d.to_string(),
                    open: o.to_string(),
                    close: c.to_string(),
                })
                .collect(),
        })
        .unwrap()
    }

    fn at(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn open_within_a_span_in_local_time() {
        // 2026-11-27 is a Friday.
        let h = hours("America/New_York", &[("fri", "09:00", "22:00")]);
        assert!(!h.is_open_at(at("2026-11-27T08:59:00-05:00")));
        assert!(h.is_open_at(at("2026-11-27T09:00:00-05:00")));
        assert!(h.is_open_at(at("2026-11-27T21:59:00-05:00")));
        assert!(!h.is_open_at(at("2026-11-27T22:00:00-05:00")));
        // 14:30 UTC is 09:30 in New York.
        assert!(h.is_open_at(at("2026-11-27T14:30:00Z")));
        assert!(!h.is_open_at(at("2026-11-28T12:00:00-05:00")));
    }

    #[test]
    fn overnight_spans_run_into_the_next_day() {
        let h = hours("Europe/Berlin", &[("sat", "18:00", "02:00")]);
        assert!(h.is_open_at(at("2026-11-28T23:30:00+01:00")));
        assert!(h.is_open_at(at("2026-11-29T01:59:00+01:00")));
        assert!(!h.is_open_at(at("2026-11-29T02:00:00+01:00")));
        assert!(!h.is_open_at(at("2026-11-28T17:00:00+01:00")));
        assert_eq!(
            h.next_change_after(at("2026-11-28T23:30:00+01:00")),
            Some(at("2026-11-29T02:00:00+01:00"))
        );
    }

    #[test]
    fn midnight_close_and_back_to_back_days_are_one_opening() {
        let h = hours(
            "UTC",
            &[("mon", "00:00", "24:00"), ("tue", "00:00", "12:00")],
        );
        // 2026-11-23 is a Monday.
        assert!(h.is_open_at(at("2026-11-23T23:59:00Z")));
        assert!(h.is_open_at(at("2026-11-24T00:00:00Z")));
        assert_eq!(
            h.next_change_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-24T12:00:00Z")),
            "midnight between two open days is not a change"
        );
        assert_eq!(
            h.next_change_after(at("2026-11-24T13:00:00Z")),
            Some(at("2026-11-30T00:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_follow_the_wall_clock() {
        // New York springs forward on 2026-03-08 at 02:00 (to 03:00).
        let h = hours("America/New_York", &[("sun", "02:30", "10:00")]);
        assert_eq!(
            h.next_change_after(at("2026-03-08T00:00:00-05:00")),
            Some(at("2026-03-08T03:00:00-04:00")),
            "an opening in the skipped hour starts when the gap ends"
        );
        assert!(h.is_open_at(at("2026-03-08T09:59:00-04:00")));
        assert!(!h.is_open_at(at("2026-03-08T10:00:00-04:00")));
    }

    #[test]
    fn a_close_in_the_repeated_hour_closes_once() {
        // Berlin falls back on 2026-10-25 at 03:00 CEST to 02:00 CET; the
        // span closes at the first 02:30.
        let h = hours("Europe/Berlin", &[("sun", "00:00", "02:30")]);
        assert!(h.is_open_at(at("2026-10-25T02:29:00+02:00")));
        assert!(!h.is_open_at(at("2026-10-25T02:30:00+02:00")));
        assert!(
            !h.is_open_at(at("2026-10-25T02:10:00+01:00")),
            "not again at the second 02:10"
        );
        assert_eq!(
            h.next_change_after(at("2026-10-25T01:00:00+02:00")),
            Some(at("2026-10-25T02:30:00+02:00"))
        );
        assert_eq!(
            h.next_change_after(at("2026-10-25T02:30:00+02:00")),
            Some(at("2026-11-01T00:00:00+01:00"))
        );
    }

    #[test]
    fn hours_that_never_change_have_no_next_change() {
        let all_week: Vec<_> = DAYS.iter().map(|d| (*d, "00:00", "24:00")).collect();
        let h = hours("Asia/Tokyo", &all_week);
        assert!(h.is_open_at(at("2026-11-27T12:00:00Z")));
        assert_eq!(h.next_change_after(at("2026-11-27T12:00:00Z")), None);
    }

    #[test]
    fn bad_hours_are_refused_with_a_reason() {
        let input = |tz: &str, d: &str, o: &str, c: &str| HoursInput {
            timezone: tz.into(),
            weekly: vec![SpanInput {
                day: d.into(),
                open: o.into(),
                close: c.into(),
            }],
        };
        for (i, why) in [
            (
                input("Mars/Olympus", "mon", "09:00", "17:00"),
                "unknown time zone",
            ),
            (input("UTC", "monday", "09:00", "17:00"), "day must be"),
            (input("UTC", "mon", "9:00", "17:00"), "HH:MM"),
            (input("UTC", "mon", "24:00", "17:00"), "HH:MM"),
            (input("UTC", "mon", "09:60", "17:00"), "HH:MM"),
            (input("UTC", "mon", "09:00", "24:01"), "HH:MM"),
            (input("UTC", "mon", "09:00", "09:00"), "empty"),
            (input("", "mon", "09:00", "17:00"), "IANA"),
        ] {
            let e = OpeningHours::parse(&i).unwrap_err();
            assert!(e.contains(why), "{e:?} should mention {why:?}");
        }
        let none = HoursInput {
            timezone: "UTC".into(),
            weekly: vec![],
        };
        assert!(OpeningHours::parse(&none).is_err());
        let many = HoursInput {
            timezone: "UTC".into(),
            weekly: vec![
                SpanInput {
                    day: "mon".into(),
                    open: "01:00".into(),
                    close: "02:00".into()
                };
                MAX_SPANS + 1
            ],
        };
        assert!(OpeningHours::parse(&many).is_err());
    }

    #[test]
    fn hours_show_as_they_were_given() {
        let h = hours(
            "UTC",
            &[("sun", "18:00", "02:00"), ("mon", "09:00", "24:00")],
        );
        assert_eq!(
            h.to_json(),
            json!({"timezone": "UTC", "weekly": [
                {"day": "mon", "open": "09:00", "close": "24:00"},
                {"day": "sun", "open": "18:00", "close": "02:00"},
            ]})
        );
    }
}
