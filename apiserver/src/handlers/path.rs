//! Kubernetes resource paths after `/api/v1` or `/apis/GROUP/VERSION`, taken apart by hand: a
//! pattern router cannot tell `/api/v1/namespaces/x` (an object) from
//! `/api/v1/namespaces/x/events` (a collection in it). A leaf: routing and the request metrics
//! both read it.

/// The parts of a resource path after its group version.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourcePath<'a> {
    pub namespace: Option<&'a str>,
    pub plural: &'a str,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

pub fn parse_resource_path<'a>(group: &str, rest: &[&'a str]) -> Option<ResourcePath<'a>> {
    let path = |namespace, plural, name, subresource| {
        Some(ResourcePath {
            namespace,
            plural,
            name,
            subresource,
        })
    };
    let namespaced = rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        // `/api/v1/namespaces/x/status` is the namespace's own subresource.
        && !(group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    if namespaced {
        match rest {
            [_, ns, plural] => path(Some(ns), plural, None, None),
            [_, ns, plural, name] => path(Some(ns), plural, Some(name), None),
            [_, ns, plural, name, sub] => path(Some(ns), plural, Some(name), Some(sub)),
            _ => None,
        }
    } else {
        match rest {
            [plural] => path(None, plural, None, None),
            [plural, name] => path(None, plural, Some(name), None),
            [plural, name, sub] => path(None, plural, Some(name), Some(sub)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_namespace_plural_name_and_subresource() {
        let check =
            |group: &str, path: &str, expect: (Option<&str>, &str, Option<&str>, Option<&str>)| {
                let rest: Vec<&str> = path.split('/').collect();
                let (namespace, plural, name, subresource) = expect;
                let expect = ResourcePath {
                    namespace,
                    plural,
                    name,
                    subresource,
                };
                assert_eq!(parse_resource_path(group, &rest), Some(expect), "{path}");
            };
        check("", "namespaces", (None, "namespaces", None, None));
        check(
            "",
            "namespaces/default",
            (None, "namespaces", Some("default"), None),
        );
        check(
            "",
            "namespaces/default/status",
            (None, "namespaces", Some("default"), Some("status")),
        );
        check(
            "",
            "namespaces/default/events",
            (Some("default"), "events", None, None),
        );
        check(
            "g",
            "namespaces/ns/instances/a/status",
            (Some("ns"), "instances", Some("a"), Some("status")),
        );
        check("g", "sleds/s1", (None, "sleds", Some("s1"), None));
    }
}
