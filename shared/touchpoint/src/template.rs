//! `{{identifier}}` placeholders in text template parameters, rendered per user.

/// A piece of a parsed text: literal text or a placeholder naming a user-attribute identifier.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits `text` into literals and placeholders. `{{ name }}` (inner spaces trimmed) is a
/// placeholder; a `{{` with no closing `}}` is literal text.
pub fn segments(text: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        if start > 0 {
            out.push(Segment::Literal(&rest[..start]));
        }
        out.push(Segment::Placeholder(after[..end].trim()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Literal(rest));
    }
    out
}

/// The identifiers that `text` refers to, in order of appearance.
pub fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    segments(text).into_iter().filter_map(|s| match s {
        Segment::Placeholder(name) => Some(name),
        Segment::Literal(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders_and_keeps_unclosed_braces_literal() {
        assert_eq!(
            segments("Hi {{ name }}, code {{code}}!"),
            vec![
                Segment::Literal("Hi "),
                Segment::Placeholder("name"),
                Segment::Literal(", code "),
                Segment::Placeholder("code"),
                Segment::Literal("!"),
            ]
        );
        assert_eq!(segments("a {{ b"), vec![Segment::Literal("a {{ b")]);
        assert_eq!(placeholders("{{x}}{{y}}").collect::<Vec<_>>(), ["x", "y"]);
        assert!(segments("").is_empty());
    }
}
