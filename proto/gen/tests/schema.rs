//! Our `.proto` files against the upstream kvproto table.
//!
//! `proto/kvproto-schema.tsv` is the upstream schema (kvproto `b6cdca19`) as
//! one row per message, field, enum value and rpc. Every element we declare
//! must exist upstream with the same number, type and label; upstream rows we
//! left out (trimmed services and messages) are fine. A drift (a renumbered
//! field, a changed type, an invented field) fails here.

use std::collections::HashMap;

use protox::prost_reflect::prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, field_descriptor_proto::Label,
    field_descriptor_proto::Type,
};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    number: String,
    ty: String,
    label: String,
    response: String,
}

/// `(kind, package, scope, name)` → row, from the upstream table.
fn upstream() -> HashMap<(String, String, String, String), Row> {
    let path = tikv_proto_gen::proto_dir().join("kvproto-schema.tsv");
    let text = std::fs::read_to_string(&path).expect("upstream table is committed");
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 9 {
            continue;
        }
        let key =
            (cols[0].to_string(), cols[2].to_string(), cols[3].to_string(), cols[4].to_string());
        rows.insert(
            key,
            Row {
                number: cols[5].to_string(),
                ty: cols[6].to_string(),
                label: cols[7].to_string(),
                response: cols[8].to_string(),
            },
        );
    }
    rows
}

fn scalar_name(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "",
    }
}

struct Collector<'a> {
    package: &'a str,
    /// Map-entry messages by full name: (key type, value type).
    map_entries: HashMap<String, (String, String)>,
    rows: Vec<((String, String, String, String), Row)>,
}

impl Collector<'_> {
    fn field_type(&self, f: &protox::prost_reflect::prost_types::FieldDescriptorProto) -> String {
        match f.r#type() {
            Type::Message | Type::Enum | Type::Group => {
                f.type_name().trim_start_matches('.').to_string()
            }
            t => scalar_name(t).to_string(),
        }
    }

    fn message(&mut self, scope: &str, m: &DescriptorProto) {
        let full = format!("{}.{}", self.package, scope);
        for nested in &m.nested_type {
            if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                let k = nested.field.iter().find(|f| f.number() == 1);
                let v = nested.field.iter().find(|f| f.number() == 2);
                if let (Some(k), Some(v)) = (k, v) {
                    let entry = format!("{full}.{}", nested.name());
                    let kt = self.field_type(k);
                    let vt = self.field_type(v);
                    self.map_entries.insert(entry, (kt, vt));
                }
            }
        }
        for nested in &m.nested_type {
            if !nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                self.message(&format!("{scope}.{}", nested.name()), nested);
            }
        }
        for e in &m.enum_type {
            self.enumeration(&format!("{scope}.{}", e.name()), e);
        }
        self.rows.push((
            ("message".into(), self.package.into(), scope.into(), String::new()),
            Row {
                number: String::new(),
                ty: String::new(),
                label: String::new(),
                response: String::new(),
            },
        ));
        for f in &m.field {
            let mut ty = self.field_type(f);
            let mut label = match f.label() {
                Label::Repeated => "repeated".to_string(),
                Label::Optional if f.proto3_optional() => "optional".to_string(),
                _ => String::new(),
            };
            if let Some((k, v)) = self.map_entries.get(&ty) {
                ty = format!("map<{k},{v}>");
                label = "map".into();
            } else if let Some(idx) = f.oneof_index
                && !f.proto3_optional()
            {
                let name = m.oneof_decl.get(idx as usize).map(|o| o.name()).unwrap_or("");
                label = format!("oneof:{name}");
            }
            self.rows.push((
                ("field".into(), self.package.into(), scope.into(), f.name().into()),
                Row { number: f.number().to_string(), ty, label, response: String::new() },
            ));
        }
    }

    fn enumeration(&mut self, scope: &str, e: &EnumDescriptorProto) {
        for v in &e.value {
            self.rows.push((
                ("enum_value".into(), self.package.into(), scope.into(), v.name().into()),
                Row {
                    number: v.number().to_string(),
                    ty: String::new(),
                    label: String::new(),
                    response: String::new(),
                },
            ));
        }
    }

    fn file(&mut self, f: &FileDescriptorProto) {
        for m in &f.message_type {
            self.message(m.name(), m);
        }
        for e in &f.enum_type {
            self.enumeration(e.name(), e);
        }
        for s in &f.service {
            for m in &s.method {
                let label = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                self.rows.push((
                    ("rpc".into(), self.package.into(), s.name().into(), m.name().into()),
                    Row {
                        number: String::new(),
                        ty: m.input_type().trim_start_matches('.').into(),
                        label: label.into(),
                        response: m.output_type().trim_start_matches('.').into(),
                    },
                ));
            }
        }
    }
}

#[test]
fn every_declared_element_matches_upstream_kvproto() {
    let src = tikv_proto_gen::proto_dir().join("proto");
    let files: Vec<_> = tikv_proto_gen::PROTO_FILES.iter().map(|f| src.join(f)).collect();
    let fds = protox::compile(&files, [&src]).expect("our proto files compile");
    let upstream = upstream();
    let mut checked = 0usize;
    let mut problems = Vec::new();
    for file in &fds.file {
        let package = file.package().to_string();
        if tikv_proto_gen::NON_KVPROTO_PACKAGES.contains(&package.as_str()) {
            continue;
        }
        let mut c = Collector { package: &package, map_entries: HashMap::new(), rows: Vec::new() };
        c.file(file);
        for (key, ours) in c.rows {
            checked += 1;
            match upstream.get(&key) {
                None => problems.push(format!("not upstream: {key:?}")),
                Some(up) if key.0 == "message" => {
                    let _ = up;
                }
                Some(up) => {
                    if up.number != ours.number
                        || up.ty != ours.ty
                        || up.label != ours.label
                        || up.response != ours.response
                    {
                        problems.push(format!("mismatch {key:?}: upstream {up:?}, ours {ours:?}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "schema drift:\n{}", problems.join("\n"));
    // The trimmed set still has well over a thousand elements; a broken
    // collector that checks nothing must not pass.
    assert!(checked > 1000, "only {checked} elements checked");
}
