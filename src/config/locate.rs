//! Finds where a field path (`routes[2].rate_limits[0].rate`) sits in the YAML text.
//!
//! Validation works on deserialized values, which have forgotten their place in the file; this
//! module parses the text once more with yaml-rust2's event parser, which marks every event, and
//! keeps a skeleton of the document (keys, indices, positions) to look paths up in.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
pub(crate) type Position = (usize, usize);

/// The positions of every node of a YAML document, searchable by field path.
#[derive(Debug)]
pub(crate) struct Locator {
    /// The document's root; `None` when the text is empty or does not parse.
    root: Option<Node>,
}

/// A node of the skeleton: where it starts, and its children.
#[derive(Debug)]
enum Node {
    /// A scalar, an alias, or anything we do not descend into.
    Leaf(Position),
    /// A sequence and its items.
    Seq(Position, Vec<Node>),
    /// A mapping: each entry's key text, key position and value.
    Map(Position, Vec<(String, Position, Node)>),
}

// === impl Locator ===

impl Locator {
    /// Parses `text`; a text yaml-rust2 cannot parse gives a locator that finds nothing.
    pub(crate) fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let parsed = Parser::new_from_str(text).load(&mut builder, false);
        let root = if parsed.is_ok() { builder.root } else { None };
        Locator { root }
    }

    /// The position of the value at `path` (`""` = the whole document). A mapping or sequence
    /// that is the value of a key is placed at its key, where a reader looks for it. When the
    /// path does not exist (a missing field), the nearest existing parent is returned instead.
    pub(crate) fn find(&self, path: &str) -> Option<Position> {
        let mut node = self.root.as_ref()?;
        let mut place = node.position();
        let mut rest = path;
        loop {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            if rest.is_empty() {
                return Some(place);
            }
            match node {
                Node::Seq(_, items) => {
                    let Some((index, after)) = parse_index(rest) else {
                        return Some(place);
                    };
                    let Some(item) = items.get(index) else {
                        return Some(place);
                    };
                    node = item;
                    place = item.position();
                    rest = after;
                }
                Node::Map(_, entries) => {
                    // Keys may contain dots (`upstreams.api.v2`), so take the longest key that
                    // the path continues with, followed by a separator or the end.
                    let entry = entries
                        .iter()
                        .filter(|(key, _, _)| {
                            rest.strip_prefix(key.as_str()).is_some_and(|after| {
                                after.is_empty() || after.starts_with(['.', '['])
                            })
                        })
                        .max_by_key(|(key, _, _)| key.len());
                    let Some((key, key_pos, value)) = entry else {
                        return Some(place);
                    };
                    node = value;
                    place = match value {
                        Node::Leaf(pos) => *pos,
                        Node::Seq(..) | Node::Map(..) => *key_pos,
                    };
                    rest = &rest[key.len()..];
                }
                Node::Leaf(_) => return Some(place),
            }
        }
    }
}

/// `[12]rest` → `(12, "rest")`.
fn parse_index(s: &str) -> Option<(usize, &str)> {
    let (index, rest) = s.strip_prefix('[')?.split_once(']')?;
    Some((index.parse().ok()?, rest))
}

/// yaml-rust2 (0.10) counts lines from 1 but columns from 0.
fn position(mark: Marker) -> Position {
    (mark.line(), mark.col() + 1)
}

// === impl Node ===

impl Node {
    /// Where a reader sees the node start. A block mapping's own mark lies after its first key
    /// (at the `:`), so the earlier of that and the first key is used.
    fn position(&self) -> Position {
        match self {
            Node::Leaf(pos) | Node::Seq(pos, _) => *pos,
            Node::Map(pos, entries) => entries
                .first()
                .map_or(*pos, |(_, key_pos, _)| (*key_pos).min(*pos)),
        }
    }
}

// === impl Builder ===

/// The key recorded for keys that are not scalars; field paths never contain it.
const UNNAMEABLE: &str = "\0";

/// Builds the skeleton from parser events.
#[derive(Default)]
struct Builder {
    /// Collections being filled, innermost last.
    open: Vec<Open>,
    /// The first complete top-level node.
    root: Option<Node>,
}

/// A collection whose end event has not arrived yet.
enum Open {
    Seq(Position, Vec<Node>),
    /// `pending` holds the key of an entry whose value has not arrived yet.
    Map(
        Position,
        Vec<(String, Position, Node)>,
        Option<(String, Position)>,
    ),
}

impl Builder {
    /// Hands a complete node to its parent (or makes it the root).
    fn complete(&mut self, node: Node) {
        match self.open.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, pending)) => match pending.take() {
                Some((key, key_pos)) => entries.push((key, key_pos, node)),
                // A complex key (a collection or an alias): no path can name it.
                None => *pending = Some((String::from(UNNAMEABLE), node.position())),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = position(mark);
        match event {
            Event::Scalar(value, ..) => {
                // A scalar in key position names the entry.
                if let Some(Open::Map(_, _, pending @ None)) = self.open.last_mut() {
                    *pending = Some((value, pos));
                } else {
                    self.complete(Node::Leaf(pos));
                }
            }
            Event::Alias(_) => self.complete(Node::Leaf(pos)),
            Event::SequenceStart(..) => self.open.push(Open::Seq(pos, Vec::new())),
            Event::MappingStart(..) => self.open.push(Open::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.open.pop() {
                    Some(Open::Seq(pos, items)) => Node::Seq(pos, items),
                    Some(Open::Map(pos, entries, _)) => Node::Map(pos, entries),
                    None => return,
                };
                self.complete(node);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}
