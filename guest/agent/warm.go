package main

import (
	"encoding/json"
	"reflect"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// warmUp does, before the agent first answers, the one-time lazy set-up
// its request paths would otherwise do in every VM: protobuf's per-message
// coders for the whole agent API and encoding/json's encoders and field
// tables for the OCI spec types. A template's clones inherit the result in
// the pages they share, so no clone writes those tables or, under TCG,
// translates the code that builds them. It ends with a GC, so that a clone
// starts with its full heap headroom before its own first collection; the
// freed heap stays mapped (returning it to the guest kernel would have
// every clone fault it back in and zero it, emulated under TCG).
func warmUp() {
	warmProto(agentapi.File_agent_proto.Messages())
	for _, v := range []any{&specs.Spec{}, &specs.Process{}} {
		warmJSON(v)
	}
	runtime.GC()
}

// warmProto round-trips an empty message of every type in msgs and their
// nested types, and says how many it round-tripped and how many have no Go
// type registered (their coders stay cold).
func warmProto(msgs protoreflect.MessageDescriptors) (warmed, missing int) {
	for i := 0; i < msgs.Len(); i++ {
		d := msgs.Get(i)
		w, m := warmProto(d.Messages())
		warmed, missing = warmed+w, missing+m
		if d.IsMapEntry() {
			continue
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
		if err != nil {
			klog.V(1).InfoS("warm-up: no Go type", "message", d.FullName(), "err", err)
			missing++
			continue
		}
		if b, err := proto.Marshal(mt.New().Interface()); err == nil {
			_ = proto.Unmarshal(b, mt.New().Interface())
		}
		warmed++
	}
	return warmed, missing
}

// warmJSON encodes v with every pointer, slice and map filled, then
// decodes the result into a new value, so both directions have met every
// type reachable from v's.
func warmJSON(v any) {
	fill(reflect.ValueOf(v).Elem(), 0)
	b, err := json.Marshal(v)
	if err != nil {
		klog.V(1).InfoS("warm-up: encode", "type", reflect.TypeOf(v).String(), "err", err)
		return
	}
	_ = json.Unmarshal(b, reflect.New(reflect.TypeOf(v).Elem()).Interface())
}

// fill gives v's pointers, slices and maps one element each, recursively,
// to a bounded depth (types may refer to themselves).
func fill(v reflect.Value, depth int) {
	if depth > 8 || !v.CanSet() {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), depth+1)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			fill(v.Field(i), depth+1)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), depth+1)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	}
}
