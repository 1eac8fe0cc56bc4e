//! Maps a key path (`clusters[1].mtas[0].name`) in a TOML text to its line,
//! so every problem can name its place.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `clusters[1].mtas[0].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Seg::Key(key.to_string()));
        next
    }

    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Seg::Index(index));
        next
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Line lookups over one TOML text.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// The line where the item at `path` is written: the key itself where
    /// the path ends in a key, else the value or table header.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        self.span(path).map(|span| self.line_of(span.start))
    }

    fn span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best = None;
        for seg in &path.0 {
            let (next, key_span) = node.child(seg)?;
            best = key_span.or_else(|| next.span()).or(best);
            node = next;
        }
        best.or_else(|| node.span())
    }

    /// The bytes of a `key = value` entry, for blanking it out; `None` for
    /// tables, whose extent is not one entry.
    pub fn entry_span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut key_span = None;
        for seg in &path.0 {
            let (next, span) = node.child(seg)?;
            key_span = span;
            node = next;
        }
        let value = node.as_value()?.span()?;
        Some(key_span.map_or(value.start, |k| k.start)..value.end)
    }

    /// The key path of the key (or scalar value) written at `offset`.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        find_key_at(Node::Item(doc.as_item()), KeyPath::root(), offset)
    }
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Table(&'d Table),
    Value(&'d Value),
}

type Child<'d> = (Seg, Node<'d>, Option<Range<usize>>);

impl<'d> Node<'d> {
    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Table(t)) | &Node::Table(t) => t.span(),
            Node::Item(item) => item.span(),
            Node::Value(v) => v.span(),
        }
    }

    fn is_scalar(&self) -> bool {
        !matches!(
            self.as_value(),
            None | Some(Value::Array(_)) | Some(Value::InlineTable(_))
        )
    }

    fn as_table(&self) -> Option<&'d Table> {
        match self {
            Node::Item(Item::Table(t)) | &Node::Table(t) => Some(t),
            _ => None,
        }
    }

    fn as_value(&self) -> Option<&'d Value> {
        match self {
            Node::Item(Item::Value(v)) | &Node::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Every child with its step and the span of its key, when it has one.
    fn children(&self) -> Vec<Child<'d>> {
        let key_span = |k: Option<&toml_edit::Key>| k.and_then(|k| k.span());
        if let Some(t) = self.as_table() {
            return t
                .iter()
                .map(|(k, item)| {
                    (
                        Seg::Key(k.to_string()),
                        Node::Item(item),
                        key_span(t.key(k)),
                    )
                })
                .collect();
        }
        if let Node::Item(Item::ArrayOfTables(a)) = self {
            return a
                .iter()
                .enumerate()
                .map(|(i, table)| (Seg::Index(i), Node::Table(table), None))
                .collect();
        }
        match self.as_value() {
            Some(Value::InlineTable(t)) => t
                .iter()
                .map(|(k, v)| (Seg::Key(k.to_string()), Node::Value(v), key_span(t.key(k))))
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (Seg::Index(i), Node::Value(v), None))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn child(&self, seg: &Seg) -> Option<(Node<'d>, Option<Range<usize>>)> {
        self.children()
            .into_iter()
            .find(|(s, _, _)| s == seg)
            .map(|(_, node, span)| (node, span))
    }
}

fn find_key_at(node: Node<'_>, path: KeyPath, offset: usize) -> Option<KeyPath> {
    for (seg, child, key_span) in node.children() {
        let mut child_path = path.clone();
        child_path.0.push(seg);
        let on_key = key_span.as_ref().is_some_and(|s| s.contains(&offset));
        let on_scalar = child.is_scalar() && child.span().is_some_and(|s| s.contains(&offset));
        if on_key || on_scalar {
            return Some(child_path);
        }
        if let Some(found) = find_key_at(child, child_path, offset) {
            return Some(found);
        }
    }
    None
}
