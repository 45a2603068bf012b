//! Binding several event sets to one trace: each record goes to the first
//! set that maps its event, sets that do not recognise the trace stay out.

use hvtrace_model::{
    class, Bindings, Catalog, Event, Field, FieldValue, Fields, Mapper, Mapping, Payload, Runstate, Vcpu,
};

/// A trace whose events are `(name, fields)`.
struct Trace(&'static [(&'static str, &'static [&'static str])]);

impl Catalog for Trace {
    fn event_count(&self) -> u32 {
        self.0.len() as u32
    }
    fn event_name(&self, id: u32) -> Option<&str> {
        self.0.get(id as usize).map(|e| e.0)
    }
    fn field_count(&self, id: u32) -> usize {
        self.0.get(id as usize).map_or(0, |e| e.1.len())
    }
    fn field_name(&self, id: u32, i: usize) -> Option<&str> {
        self.0.get(id as usize)?.1.get(i).copied()
    }
    fn enum_labels(&self, _: u32, _: usize) -> Vec<(i64, String)> {
        Vec::new()
    }
}

/// Maps `event(vcpu)` to a runstate change of vCPU `(domain, vcpu)`.
struct Set {
    name: &'static str,
    event: &'static str,
    domain: u32,
}

struct SetMapper {
    id: u32,
    vcpu: Field,
    domain: u32,
}

impl Mapping for Set {
    fn name(&self) -> &'static str {
        self.name
    }
    fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
        let (id, [vcpu]) = class(c, self.event, ["vcpu"])?;
        Some(Box::new(SetMapper { id, vcpu, domain: self.domain }))
    }
}

impl Mapper for SetMapper {
    fn maps(&self, id: u32) -> bool {
        id == self.id
    }
    fn map<'m>(&'m self, _: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
        if let Some(v) = f.uint(self.vcpu) {
            out.push(Event::Runstate { vcpu: Vcpu::new(self.domain, v as u32), new: Runstate::Blocked });
        }
    }
}

#[test]
fn each_record_goes_to_the_set_that_maps_its_event() {
    let trace = Trace(&[("noise", &["x"]), ("halt", &["vcpu"]), ("sleep", &["pad", "vcpu"])]);
    let halt = Set { name: "halt-set", event: "halt", domain: 1 };
    let sleep = Set { name: "sleep-set", event: "sleep", domain: 2 };
    let absent = Set { name: "absent", event: "nope", domain: 3 };
    let b = Bindings::bind(&[&absent, &halt, &sleep], &trace);
    assert_eq!(b.names(), ["halt-set", "sleep-set"]);
    assert_eq!((b.maps(0), b.maps(1), b.maps(2), b.maps(3)), (false, true, true, false));

    let mut got = Vec::new();
    b.map(0, &[FieldValue::Int(9)], &mut got);
    b.map(1, &[FieldValue::Int(4)], &mut got);
    // `sleep` has `vcpu` second: looked up by name, not position.
    b.map(2, &[FieldValue::Int(7), FieldValue::Int(5)], &mut got);
    b.map(99, &[FieldValue::Int(1)], &mut got);
    let vcpus: Vec<_> = got.iter().map(|e| e.vcpu().unwrap()).collect();
    assert_eq!(vcpus, [Vcpu::new(1, 4), Vcpu::new(2, 5)]);
}

#[test]
fn a_trace_no_set_recognises_binds_nothing() {
    let trace = Trace(&[("noise", &["x"])]);
    let b = Bindings::bind(&[&Set { name: "s", event: "halt", domain: 0 }], &trace);
    assert!(b.is_empty() && b.names().is_empty());
}

#[test]
fn a_field_of_the_wrong_kind_reads_as_absent() {
    let f = [FieldValue::Bytes(b"abc"), FieldValue::Int(u64::MAX)];
    assert_eq!((f.uint(0), f.bytes(0)), (None, Some(&b"abc"[..])));
    assert_eq!((f.int(1), f.bytes(1), f.uint(2)), (Some(-1), None, None));
}
