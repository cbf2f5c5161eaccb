//! Which resource types the API server serves, and how a user's word names one of them.
//!
//! The catalog is read from legacy discovery (`/api`, `/api/v1`, `/apis`, `/apis/G/V`) on each
//! run, like kubectl without its cache. kube-rs' own `Discovery` drops short and singular names,
//! which `corralctl get inst` needs, so the resource lists are read here.
//!
//! A word names a resource type if (and only if), ignoring case, it is its plural, its singular,
//! one of its short names or its kind, optionally followed by `.GROUP` (`instances.corral.dev`).
//! When several groups serve a matching type, Corral's group wins, then the core group, then
//! the others in name order. Only each group's preferred version is looked up by word; every
//! served version is looked up by `apiVersion` + `kind` (manifests).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::discovery::ApiResource;

/// One served resource type at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    pub api_resource: ApiResource,
    pub namespaced: bool,
    pub singular: String,
    pub short_names: Vec<String>,
    /// Whether this version is its group's preferred one.
    pub preferred: bool,
}

impl ResourceType {
    /// A resource type at `api_version` (`v1` or `GROUP/VERSION`).
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
        let (group, version) = split_api_version(api_version);
        ResourceType {
            api_resource: ApiResource {
                group: group.to_string(),
                version: version.to_string(),
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
            },
            namespaced,
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            preferred: true,
        }
    }

    pub fn kind(&self) -> &str {
        &self.api_resource.kind
    }

    pub fn group(&self) -> &str {
        &self.api_resource.group
    }

    /// `instance.corral.dev` (or `namespace` in the core group): how kubectl names a type in
    /// `-o name` output and messages.
    pub fn kind_and_group(&self) -> String {
        let kind = self.api_resource.kind.to_lowercase();
        if self.group().is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group())
        }
    }

    /// `instances.corral.dev`, as the server names the type in its messages.
    pub fn plural_and_group(&self) -> String {
        if self.group().is_empty() {
            self.api_resource.plural.clone()
        } else {
            format!("{}.{}", self.api_resource.plural, self.group())
        }
    }

    /// `instance.corral.dev/NAME`.
    pub fn object_name(&self, name: &str) -> String {
        format!("{}/{name}", self.kind_and_group())
    }

    /// How strongly `word` names this type: plural, then singular, then short name, then kind.
    fn match_rank(&self, word: &str) -> Option<u8> {
        if self.api_resource.plural.eq_ignore_ascii_case(word) {
            Some(0)
        } else if self.singular.eq_ignore_ascii_case(word) {
            Some(1)
        } else if self
            .short_names
            .iter()
            .any(|s| s.eq_ignore_ascii_case(word))
        {
            Some(2)
        } else if self.api_resource.kind.eq_ignore_ascii_case(word) {
            Some(3)
        } else {
            None
        }
    }
}

/// `corral.dev/v1alpha1` → (`corral.dev`, `v1alpha1`); `v1` → (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

fn group_rank(group: &str) -> u8 {
    if group == corral_crds::GROUP {
        0
    } else if group.is_empty() {
        1
    } else {
        2
    }
}

/// Every resource type the server serves.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    types: Vec<ResourceType>,
}

impl Catalog {
    pub fn new(types: Vec<ResourceType>) -> Catalog {
        Catalog { types }
    }

    /// Reads the catalog from the server's discovery endpoints.
    pub async fn discover(client: &kube::Client) -> Result<Catalog, kube::Error> {
        let mut types = Vec::new();
        let core = client.list_core_api_versions().await?;
        for (i, version) in core.versions.iter().enumerate() {
            let list = client.list_core_api_resources(version).await?;
            add_resources(&mut types, &list, i == 0);
        }
        let groups = client.list_api_groups().await?;
        for group in &groups.groups {
            let preferred = group
                .preferred_version
                .as_ref()
                .map(|v| v.group_version.clone())
                .or_else(|| group.versions.first().map(|v| v.group_version.clone()));
            for version in &group.versions {
                let list = client
                    .list_api_group_resources(&version.group_version)
                    .await?;
                add_resources(
                    &mut types,
                    &list,
                    preferred.as_deref() == Some(version.group_version.as_str()),
                );
            }
        }
        Ok(Catalog { types })
    }

    /// The type a user's word names (`instances`, `inst`, `Instance`, `instances.corral.dev`).
    pub fn by_name(&self, word: &str) -> Option<&ResourceType> {
        let word = word.trim();
        let candidates = |name: &str, group: Option<&str>| {
            let mut found: Vec<(u8, u8, &ResourceType)> = self
                .types
                .iter()
                .filter(|t| t.preferred)
                .filter(|t| group.is_none_or(|g| t.group().eq_ignore_ascii_case(g)))
                .filter_map(|t| {
                    t.match_rank(name)
                        .map(|rank| (rank, group_rank(t.group()), t))
                })
                .collect();
            found.sort_by(|a, b| (a.0, a.1, a.2.group()).cmp(&(b.0, b.1, b.2.group())));
            found.first().map(|(_, _, t)| *t)
        };
        if let Some(found) = candidates(word, None) {
            return Some(found);
        }
        // `instances.corral.dev`: the part before the first dot names the type in that group.
        let (name, group) = word.split_once('.')?;
        candidates(name, Some(group))
    }

    /// The type of a manifest's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_resource.api_version == api_version && t.api_resource.kind == kind)
    }

    /// Whether some type of that kind is served (at another version), for better messages.
    pub fn versions_of_kind(&self, kind: &str) -> Vec<&str> {
        self.types
            .iter()
            .filter(|t| t.api_resource.kind == kind)
            .map(|t| t.api_resource.api_version.as_str())
            .collect()
    }

    /// The preferred version of each type of `group`.
    pub fn in_group<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a ResourceType> {
        self.types
            .iter()
            .filter(move |t| t.preferred && t.group() == group)
    }
}

fn add_resources(types: &mut Vec<ResourceType>, list: &APIResourceList, preferred: bool) {
    for resource in &list.resources {
        // Subresources (`instances/status`) are not types of their own.
        if resource.name.contains('/') {
            continue;
        }
        let mut found = ResourceType::new(
            &list.group_version,
            &resource.kind,
            &resource.name,
            resource.namespaced,
        );
        if !resource.singular_name.is_empty() {
            found.singular = resource.singular_name.clone();
        }
        found.short_names = resource.short_names.clone().unwrap_or_default();
        found.preferred = preferred;
        types.push(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut instances = ResourceType::new("corral.dev/v1alpha1", "Instance", "instances", true);
        instances.short_names = vec!["inst".into()];
        let mut events = ResourceType::new("v1", "Event", "events", true);
        events.short_names = vec!["ev".into()];
        let other_events = ResourceType::new("events.k8s.io/v1", "Event", "events", true);
        let sleds = ResourceType::new("corral.dev/v1alpha1", "Sled", "sleds", false);
        let mut old_sleds = ResourceType::new("corral.dev/v1alpha0", "Sled", "sleds", false);
        old_sleds.preferred = false;
        Catalog::new(vec![other_events, events, instances, sleds, old_sleds])
    }

    #[test]
    fn a_type_is_named_by_plural_singular_short_name_or_kind() {
        let catalog = catalog();
        for word in ["instances", "instance", "inst", "Instance", "INSTANCES"] {
            let found = catalog.by_name(word).map(|t| t.kind());
            assert_eq!(found, Some("Instance"), "{word}");
        }
        assert_eq!(
            catalog.by_name("instance.corral.dev").map(|t| t.kind()),
            Some("Instance")
        );
        assert_eq!(catalog.by_name("widgets"), None);
        assert_eq!(catalog.by_name("instances.example.com"), None);
    }

    #[test]
    fn the_core_group_wins_over_other_groups_and_a_group_suffix_chooses() {
        let catalog = catalog();
        assert_eq!(catalog.by_name("events").map(|t| t.group()), Some(""));
        assert_eq!(
            catalog.by_name("events.events.k8s.io").map(|t| t.group()),
            Some("events.k8s.io")
        );
    }

    #[test]
    fn manifests_find_every_served_version_but_words_only_the_preferred_one() {
        let catalog = catalog();
        assert!(catalog.by_kind("corral.dev/v1alpha0", "Sled").is_some());
        assert_eq!(
            catalog
                .by_name("sleds")
                .map(|t| t.api_resource.version.as_str()),
            Some("v1alpha1")
        );
        assert!(catalog.by_kind("corral.dev/v1", "Sled").is_none());
        assert_eq!(
            catalog.by_name("sled").unwrap().object_name("s1"),
            "sled.corral.dev/s1"
        );
        assert_eq!(catalog.by_name("ev").unwrap().object_name("e"), "event/e");
    }
}
