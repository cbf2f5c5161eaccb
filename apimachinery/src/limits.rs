//! How deep and how large an object may be, and the measures behind both: an object is
//! *within limits* if (and only if)
//!
//! - its fields nest at most [`ObjectLimits::max_depth`] levels (the object itself is level
//!   1, `spec` level 2, …), its `metadata.managedFields` at most
//!   [`MANAGED_FIELDS_EXTRA_DEPTH`] levels more (they record each field a few levels below where
//!   the object holds it), and
//! - it serializes to at most [`ObjectLimits::max_bytes`] bytes of compact JSON.
//!
//! Why a depth limit at all: every JSON decoder the objects meet — the server's own store
//! decoder and watch cache, and kube-rs clients, all `serde_json` — stops at 128 levels
//! ([`DECODER_DEPTH`]), and a list wraps each object in two more levels, a Table row in three,
//! a watch event of a Table row in four.
//! An object deeper than a decoder reads would be stored and then never read back.
//!
//! **Invariants:** nothing here recurses deeper than the limit it checks, so a value of any
//! depth is measured without exhausting the stack; nothing here panics on any input.

use serde_json::Value;

use crate::validation::{FieldError, FieldErrorKind, path};

/// The deepest nesting `serde_json` decodes: its recursion limit of 128 refuses the 128th
/// nested container.
pub const DECODER_DEPTH: usize = 127;

/// How much deeper than an object's fields its `metadata.managedFields` may nest: the root of
/// an entry's `fieldsV1` is 4 levels down (object, `metadata`, the list, the entry) and each
/// scalar field is recorded as an empty object, one level more.
pub const MANAGED_FIELDS_EXTRA_DEPTH: usize = 5;

/// The most levels any reply wraps around an object: a watch event of a Table row with the
/// whole object (`{"object":{"rows":[{"object":…}]}}`).
pub const WRAPPING_DEPTH: usize = 4;

/// How deep and how large a stored object may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLimits {
    /// The deepest nesting of an object's fields (the object itself is level 1).
    pub max_depth: usize,
    /// The most bytes an object may take as compact JSON.
    pub max_bytes: usize,
}

impl ObjectLimits {
    /// The default limits: 100 levels, so that an object, its managedFields and the deepest
    /// reply around it stay below what `serde_json` decodes; 1,500,000 bytes, which with its
    /// key and the transaction around it fits etcd's default request limit of 1.5 MiB
    /// (Kubernetes' effective object size limit).
    pub const DEFAULT: ObjectLimits = ObjectLimits {
        max_depth: 100,
        max_bytes: 1_500_000,
    };
}

impl Default for ObjectLimits {
    fn default() -> ObjectLimits {
        ObjectLimits::DEFAULT
    }
}

const _: () = assert!(
    ObjectLimits::DEFAULT.max_depth + MANAGED_FIELDS_EXTRA_DEPTH + WRAPPING_DEPTH <= DECODER_DEPTH
);

/// The nesting depth of `value`: 0 for a scalar, 1 for an empty object or array, one more per
/// level of containers inside. Counted without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level);
        stack.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

/// The bytes `value` takes as compact JSON, counted without building the text.
pub fn serialized_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Why `object` is not within `limits`, if it is not: the error names the first field nested
/// too deep or, for an object too large, its largest top-level field.
pub fn object_violation(object: &Value, limits: ObjectLimits) -> Option<FieldError> {
    depth_violation(object, limits.max_depth).or_else(|| size_violation(object, limits.max_bytes))
}

/// The depth half of [`object_violation`].
pub fn depth_violation(object: &Value, max_depth: usize) -> Option<FieldError> {
    let found = match object.get("metadata") {
        Some(Value::Object(metadata)) if metadata.contains_key("managedFields") => {
            let allowed = max_depth + MANAGED_FIELDS_EXTRA_DEPTH;
            let managed = &metadata["managedFields"];
            too_deep_except(object, max_depth, managed)
                .map(|field| (field, max_depth))
                .or_else(|| {
                    let mut inner = too_deep(managed, 3, allowed)?;
                    inner.extend([Segment::Key("managedFields"), Segment::Key("metadata")]);
                    Some((inner, allowed))
                })
        }
        _ => too_deep(object, 1, max_depth).map(|field| (field, max_depth)),
    };
    let (segments, allowed) = found?;
    Some(FieldError::forbidden(
        render(&segments),
        format!("nested too deeply: an object may nest at most {allowed} levels"),
    ))
}

/// The size half of [`object_violation`].
pub fn size_violation(object: &Value, max_bytes: usize) -> Option<FieldError> {
    let size = serialized_len(object);
    if size <= max_bytes {
        return None;
    }
    let (field, field_size) = match object {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| (name.clone(), serialized_len(value)))
            .max_by_key(|(_, size)| *size)
            .unwrap_or_default(),
        _ => (String::new(), size),
    };
    Some(FieldError {
        kind: FieldErrorKind::TooLong,
        field,
        detail: format!(
            "the object would take {size} bytes, more than the limit of {max_bytes}; this field takes {field_size} of them"
        ),
        bad_value: None,
    })
}

/// One step of a field path, collected from the leaf up.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `segments` (leaf first) as a field path: `spec.items[0].name`.
fn render(segments: &[Segment<'_>]) -> String {
    segments
        .iter()
        .rev()
        .fold(String::new(), |field, segment| match segment {
            Segment::Key(key) => path::child(&field, key),
            Segment::Index(i) => path::index(&field, *i),
        })
}

/// The path (leaf first) of the first container in `value`, which sits at `level`, that lies
/// deeper than `max_depth`. Recurses at most `max_depth - level + 1` times.
fn too_deep(value: &Value, level: usize, max_depth: usize) -> Option<Vec<Segment<'_>>> {
    too_deep_filtered(value, level, max_depth, None)
}

/// [`too_deep`] of `object` from the top, passing over `skipped` (checked on its own).
fn too_deep_except<'a>(
    object: &'a Value,
    max_depth: usize,
    skipped: &Value,
) -> Option<Vec<Segment<'a>>> {
    too_deep_filtered(object, 1, max_depth, Some(skipped))
}

fn too_deep_filtered<'a>(
    value: &'a Value,
    level: usize,
    max_depth: usize,
    skipped: Option<&Value>,
) -> Option<Vec<Segment<'a>>> {
    let children: Box<dyn Iterator<Item = (Segment<'a>, &'a Value)>> = match value {
        Value::Array(items) => Box::new(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| (Segment::Index(i), item)),
        ),
        Value::Object(map) => Box::new(
            map.iter()
                .map(|(key, item)| (Segment::Key(key.as_str()), item)),
        ),
        _ => return None,
    };
    if level > max_depth {
        return Some(Vec::new());
    }
    for (segment, item) in children {
        if skipped.is_some_and(|skipped| std::ptr::eq(skipped, item)) {
            continue;
        }
        if let Some(mut found) = too_deep_filtered(item, level + 1, max_depth, skipped) {
            found.push(segment);
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
