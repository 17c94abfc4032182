//! Labels an operation stamps into the `kvrpcpb::Context` of every request
//! it sends: priority, request source and resource group. TiKV schedules by
//! them (priority, resource control) and reports by them (metrics, top-SQL);
//! client-go sets them per transaction or snapshot (`KVTxn.SetPriority`,
//! `SetResourceGroupName`, `SetResourceGroupTag`, `SetRequestSourceType`).

use bytes::Bytes;
use tikv_proto::kvrpcpb;

/// Who sent a request, as TiKV's `Context.request_source` label (client-go
/// `util.RequestSource`).
///
/// ```
/// use tikv_core::rpc::RequestSource;
///
/// assert_eq!(RequestSource::external("Insert").label(), "external_Insert");
/// let backup = RequestSource::internal("stats").with_explicit_type("br");
/// assert_eq!(backup.label(), "internal_stats_br");
/// assert_eq!(RequestSource::default().label(), "unknown");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestSource {
    /// Issued by the system itself (GC, statistics, DDL) rather than a user.
    pub internal: bool,
    /// What kind of work, e.g. `Select`, `Insert`, `gc`, `stats`.
    pub source_type: String,
    /// The component on whose behalf it was sent (`br`, `lightning`,
    /// `dumpling`, `ddl`, `stats`, `import`, `background`), set by the
    /// caller or the user.
    pub explicit_type: String,
}

impl RequestSource {
    /// A user request of this type.
    pub fn external(source_type: impl Into<String>) -> RequestSource {
        RequestSource { internal: false, source_type: source_type.into(), ..Default::default() }
    }

    /// A system request of this type.
    pub fn internal(source_type: impl Into<String>) -> RequestSource {
        RequestSource { internal: true, source_type: source_type.into(), ..Default::default() }
    }

    /// Names the component the request is sent for.
    pub fn with_explicit_type(mut self, explicit_type: impl Into<String>) -> RequestSource {
        self.explicit_type = explicit_type.into();
        self
    }

    /// The label TiKV receives (client-go `GetRequestSource`):
    /// `{internal|external}_{type}[_{explicit}]`, `unknown` when neither
    /// type is set, and the explicit type left out when it repeats the type.
    pub fn label(&self) -> String {
        if self.source_type.is_empty() && self.explicit_type.is_empty() {
            return "unknown".to_string();
        }
        let origin = if self.internal { "internal" } else { "external" };
        let source = if self.source_type.is_empty() { "unknown" } else { &self.source_type };
        let mut label = format!("{origin}_{source}");
        if !self.explicit_type.is_empty() && self.explicit_type != self.source_type {
            label.push('_');
            label.push_str(&self.explicit_type);
        }
        label
    }
}

/// The labels of one transaction, snapshot or operation. The default sends
/// nothing beyond TiKV's defaults (normal priority, no group, no source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestTags {
    /// `Context.priority`: TiKV's scheduler serves high before normal before
    /// low.
    pub priority: kvrpcpb::CommandPri,
    /// `Context.request_source`.
    pub request_source: Option<RequestSource>,
    /// `Context.resource_control_context.resource_group_name`: the resource
    /// group whose quota the request consumes.
    pub resource_group_name: Option<String>,
    /// `Context.resource_group_tag`: opaque bytes TiKV attributes CPU and
    /// I/O to (TiDB puts the SQL and plan digests there).
    pub resource_group_tag: Bytes,
}

impl RequestTags {
    /// Schedules the requests at `priority` in TiKV.
    pub fn with_priority(mut self, priority: kvrpcpb::CommandPri) -> RequestTags {
        self.priority = priority;
        self
    }

    /// Labels the requests with who sent them.
    pub fn with_request_source(mut self, source: RequestSource) -> RequestTags {
        self.request_source = Some(source);
        self
    }

    /// Charges the requests to resource group `name`.
    pub fn with_resource_group_name(mut self, name: impl Into<String>) -> RequestTags {
        self.resource_group_name = Some(name.into());
        self
    }

    /// Attaches opaque bytes TiKV attributes resource usage to.
    pub fn with_resource_group_tag(mut self, tag: impl Into<Bytes>) -> RequestTags {
        self.resource_group_tag = tag.into();
        self
    }

    /// True when stamping would change nothing.
    pub fn is_empty(&self) -> bool {
        *self == RequestTags::default()
    }

    /// Writes the labels into `ctx`, leaving its other fields alone.
    pub fn stamp(&self, ctx: &mut kvrpcpb::Context) {
        ctx.priority = self.priority as i32;
        if let Some(source) = &self.request_source {
            ctx.request_source = source.label();
        }
        if let Some(group) = &self.resource_group_name {
            ctx.resource_control_context
                .get_or_insert_with(Default::default)
                .resource_group_name
                .clone_from(group);
        }
        if !self.resource_group_tag.is_empty() {
            ctx.resource_group_tag = self.resource_group_tag.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_client_go() {
        let cases = [
            (RequestSource::default(), "unknown"),
            (RequestSource::external("Select"), "external_Select"),
            (RequestSource::internal("gc"), "internal_gc"),
            (RequestSource::internal("stats").with_explicit_type("stats"), "internal_stats"),
            (
                RequestSource::external("Insert").with_explicit_type("lightning"),
                "external_Insert_lightning",
            ),
            (RequestSource::external("").with_explicit_type("br"), "external_unknown_br"),
        ];
        for (source, label) in cases {
            assert_eq!(source.label(), label, "{source:?}");
        }
    }

    #[test]
    fn stamping_sets_only_what_is_given() {
        let mut ctx = kvrpcpb::Context { region_id: 7, ..Default::default() };
        RequestTags::default().stamp(&mut ctx);
        assert_eq!(ctx, kvrpcpb::Context { region_id: 7, ..Default::default() });

        let tags = RequestTags {
            priority: kvrpcpb::CommandPri::Low,
            request_source: Some(RequestSource::external("Update")),
            resource_group_name: Some("batch".into()),
            resource_group_tag: Bytes::from_static(b"digest"),
        };
        tags.stamp(&mut ctx);
        assert_eq!(ctx.region_id, 7);
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::Low as i32);
        assert_eq!(ctx.request_source, "external_Update");
        assert_eq!(ctx.resource_control_context.unwrap().resource_group_name, "batch");
        assert_eq!(&ctx.resource_group_tag[..], b"digest");
    }
}
