package failpoint

import (
	"errors"
	"maps"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"a=kill", map[string]string{"a": "kill"}},
		{" a=kill , b=error,junk,=x", map[string]string{"a": "kill", "b": "error"}},
	} {
		if got := parse(tc.in); !maps.Equal(got, tc.want) {
			t.Errorf("parse(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestHit(t *testing.T) {
	old := points
	defer func() { points = old }()
	points = map[string]string{"e": "error", "x": "bogus"}
	if err := Hit("unset"); err != nil {
		t.Errorf("unset failpoint: %v", err)
	}
	if err := Hit("e"); !errors.Is(err, ErrInjected) {
		t.Errorf("error failpoint: %v", err)
	}
	if err := Hit("x"); err == nil || errors.Is(err, ErrInjected) {
		t.Errorf("unknown action: %v", err)
	}
}
