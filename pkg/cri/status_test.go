package cri

import (
	"context"
	"errors"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

func TestStatus(t *testing.T) {
	tests := []struct {
		name  string
		opts  []Option
		ready bool
	}{
		{name: "no driver", ready: false},
		{name: "tcg", opts: []Option{WithAccel(func() (vm.Accel, error) { return vm.AccelTCG, nil })}, ready: true},
		{name: "probe failed", opts: []Option{WithAccel(func() (vm.Accel, error) { return "", errors.New("no qemu") })}, ready: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := New(tc.opts...).Status(context.Background(), &runtimeapi.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range resp.Status.Conditions {
				switch c.Type {
				case runtimeapi.RuntimeReady:
					if c.Status != tc.ready {
						t.Errorf("RuntimeReady = %v (%s), want %v", c.Status, c.Message, tc.ready)
					}
				case runtimeapi.NetworkReady:
					if c.Status {
						t.Error("NetworkReady true without CNI")
					}
				}
			}
		})
	}
}
