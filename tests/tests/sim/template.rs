//! The settings the simulation takes from `template.yaml`, read from the file itself, so that a
//! change there changes what the simulation emulates.

use std::time::Duration;

/// A value in the template by its path of keys (`Resources`, `DispatchQueue`, `Properties`, …):
/// a small reader for the block-style YAML the template is written in (one key per line,
/// children indented under their parent).
pub fn value(text: &str, path: &[&str]) -> Option<String> {
    // Indents of the keys matched so far, and the indent of their children once seen.
    let mut matched: Vec<usize> = Vec::new();
    let mut child_indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while matched.last().is_some_and(|m| indent <= *m) {
            matched.pop();
            child_indent = None;
        }
        let depth = matched.len();
        let expected = *child_indent.get_or_insert(indent);
        if indent != expected {
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        if key.trim() != path[depth] {
            continue;
        }
        if depth + 1 == path.len() {
            let v = rest.split(" #").next().unwrap_or_default().trim();
            return Some(v.trim_matches('"').to_owned());
        }
        matched.push(indent);
        child_indent = None;
    }
    None
}

/// What the template says about the dispatch queue, the dispatcher and the receipt poller.
#[derive(Clone, Debug)]
pub struct Template {
    pub dispatcher_timeout: Duration,
    pub batch_size: i32,
    pub batching_window: Duration,
    pub max_receives_env: u32,
    pub visibility_timeout: Duration,
    pub retention: Duration,
    pub maximum_message_size: u64,
    pub delay_seconds: u64,
    pub max_receive_count: u32,
    pub poller_timeout: Duration,
    pub poller_async_retries: u32,
    /// Everything runs this many times faster than on AWS (60: an hour of retries in a
    /// minute).
    pub factor: f64,
}

impl Template {
    /// `d` in this scenario's compressed time.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.factor)
    }

    pub fn read(factor: f64) -> Template {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml"))
                .expect("template.yaml");
        let get = |path: &[&str]| -> String {
            value(&text, path).unwrap_or_else(|| panic!("template.yaml has no {}", path.join(".")))
        };
        let num = |path: &[&str]| -> u64 {
            let v = get(path);
            v.parse()
                .unwrap_or_else(|_| panic!("{}: {v:?} is not a number", path.join(".")))
        };
        let q = |key: &str| num(&["Resources", "DispatchQueue", "Properties", key]);
        let event_source = |key: &str| {
            num(&[
                "Resources",
                "DispatcherFunction",
                "Properties",
                "Events",
                "Dispatches",
                "Properties",
                key,
            ])
        };
        Template {
            dispatcher_timeout: Duration::from_secs(num(&[
                "Resources",
                "DispatcherFunction",
                "Properties",
                "Timeout",
            ])),
            batch_size: event_source("BatchSize") as i32,
            batching_window: Duration::from_secs(event_source("MaximumBatchingWindowInSeconds")),
            max_receives_env: num(&[
                "Resources",
                "DispatcherFunction",
                "Properties",
                "Environment",
                "Variables",
                "MAX_RECEIVES",
            ]) as u32,
            visibility_timeout: Duration::from_secs(q("VisibilityTimeout")),
            retention: Duration::from_secs(q("MessageRetentionPeriod")),
            maximum_message_size: q("MaximumMessageSize"),
            delay_seconds: q("DelaySeconds"),
            max_receive_count: num(&[
                "Resources",
                "DispatchQueue",
                "Properties",
                "RedrivePolicy",
                "maxReceiveCount",
            ]) as u32,
            poller_timeout: Duration::from_secs(num(&[
                "Resources",
                "ReceiptPollerFunction",
                "Properties",
                "Timeout",
            ])),
            poller_async_retries: num(&[
                "Resources",
                "ReceiptPollerFunction",
                "Properties",
                "EventInvokeConfig",
                "MaximumRetryAttempts",
            ]) as u32,
            factor,
        }
    }
}

#[test]
fn the_reader_follows_the_nesting() {
    let text = "A:\n  B:\n    C: 1 # note\n  D:\n    C: 2\nE:\n  C: \"3\"\n";
    assert_eq!(value(text, &["A", "B", "C"]).as_deref(), Some("1"));
    assert_eq!(value(text, &["A", "D", "C"]).as_deref(), Some("2"));
    assert_eq!(value(text, &["E", "C"]).as_deref(), Some("3"));
    assert_eq!(value(text, &["A", "C"]), None, "not a grandchild");
}
