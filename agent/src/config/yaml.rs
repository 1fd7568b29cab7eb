//! A YAML document as a tree of nodes that remember where they are in the file.
//!
//! `serde_yaml` values carry no positions, so the configuration is read from saphyr-parser's
//! events instead: every node keeps its line and column, and [`super::decode`] can name the exact
//! place of each problem. Scalars are typed here by the YAML 1.2 core schema.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::Problem;

/// A place in the file; line and column both count from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of the file, for problems about a file with no content.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug)]
pub(super) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug)]
pub(super) enum Value {
    /// A scalar's text, typed by the core schema.
    Scalar(String, Scalar),
    Seq(Vec<Node>),
    /// The entries in file order, duplicates included (the decoder reports them).
    Map(Vec<(Node, Node)>),
}

/// The type of a scalar under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scalar {
    Null,
    Bool,
    /// An integer; `None` when it does not fit in an `i128` (it is out of every range then).
    Int(Option<i128>),
    Float,
    /// A string that was written plain (unquoted).
    Str,
    /// A string that was quoted or written as a block scalar.
    Quoted,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Scalar(_, Scalar::Null))
    }

    /// The node's text when it is a string (plain or quoted).
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(text, Scalar::Str | Scalar::Quoted) => Some(text),
            _ => None,
        }
    }

    /// What the node is, for messages: "an integer `5`", "a mapping", ...
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a sequence".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar(text, _) if text.is_empty() && self.is_null() => "an empty value".into(),
            Value::Scalar(text, kind) => {
                let what = match kind {
                    Scalar::Null => "null",
                    Scalar::Bool => "a boolean",
                    Scalar::Int(_) => "an integer",
                    Scalar::Float => "a floating-point number",
                    Scalar::Str | Scalar::Quoted => "a string",
                };
                format!("{what} `{text}`")
            }
        }
    }
}

/// Parses `text`, which holds at most one YAML document; `Ok(None)` when it holds none.
///
/// A syntax error ends the parse: the problem it returns is about the whole document.
pub(super) fn parse(text: &str) -> Result<Option<Node>, Problem> {
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            let pos = Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            };
            whole(pos, format!("YAML syntax error: {}", e.info()))
        })?;
        let pos = Pos::of(&span);
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(whole(
                        pos,
                        "a second YAML document, expected only one".into(),
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(whole(
                    pos,
                    "YAML aliases (`*name`) are not supported here".into(),
                ));
            }
            Event::Scalar(text, style, _, tag) => {
                let kind = scalar_kind(&text, style, tag.as_deref(), pos)?;
                Node {
                    pos,
                    value: Value::Scalar(text.into_owned(), kind),
                }
            }
            Event::SequenceStart(_, tag) => {
                check_tag(tag.as_deref(), pos)?;
                stack.push(Open {
                    pos,
                    items: Vec::new(),
                    is_map: false,
                });
                continue;
            }
            Event::MappingStart(_, tag) => {
                check_tag(tag.as_deref(), pos)?;
                stack.push(Open {
                    pos,
                    items: Vec::new(),
                    is_map: true,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(open) => open.close(),
                None => continue,
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        match stack.last_mut() {
            Some(parent) => parent.items.push(node),
            None => root = Some(node),
        }
    }
    Ok(root)
}

/// A sequence or mapping whose end has not been read yet.
struct Open {
    pos: Pos,
    /// The items of a sequence, or the keys and values of a mapping, alternating.
    items: Vec<Node>,
    is_map: bool,
}

impl Open {
    fn close(self) -> Node {
        let value = if self.is_map {
            let mut entries = Vec::with_capacity(self.items.len() / 2);
            let mut items = self.items.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                entries.push((key, value));
            }
            Value::Map(entries)
        } else {
            Value::Seq(self.items)
        };
        Node {
            pos: self.pos,
            value,
        }
    }
}

fn whole(pos: Pos, message: String) -> Problem {
    Problem {
        line: pos.line,
        column: pos.column,
        field: "(document)".into(),
        message,
    }
}

/// Tags of the core schema are allowed (`!!str` makes a string); any other tag is refused.
fn check_tag(tag: Option<&Tag>, pos: Pos) -> Result<(), Problem> {
    match tag {
        Some(tag) if !tag.is_yaml_core_schema() => Err(whole(
            pos,
            format!("YAML tag `{tag}` is not supported here"),
        )),
        _ => Ok(()),
    }
}

fn scalar_kind(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<Scalar, Problem> {
    check_tag(tag, pos)?;
    if style != ScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return Ok(Scalar::Quoted);
    }
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => Scalar::Bool,
        _ => match parse_int(text) {
            Some(int) => int,
            None if is_float(text) => Scalar::Float,
            None => Scalar::Str,
        },
    })
}

/// `Some(Scalar::Int(_))` when `text` is a core-schema integer, `None` when it is not.
fn parse_int(text: &str) -> Option<Scalar> {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    let (body, radix) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(oct) = text.strip_prefix("0o") {
        (oct, 8)
    } else {
        (text.strip_prefix(['-', '+']).unwrap_or(text), 10)
    };
    if !digits(body, radix) {
        return None;
    }
    let value = if radix == 10 {
        text.parse()
    } else {
        i128::from_str_radix(body, radix)
    };
    Some(Scalar::Int(value.ok()))
}

/// Whether `text` is a core-schema float (`1.5`, `-2e3`, `.inf`, `.nan`, ...).
fn is_float(text: &str) -> bool {
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            all_digits(int) && all_digits(frac) && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| !e.is_empty() && all_digits(e))
}
