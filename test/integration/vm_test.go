package integration

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/agent"
)

func TestEchoHello(t *testing.T) {
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "echo", Args: []string{"echo", "hello"}}, nil, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || out.String() != "hello\n" || errb.Len() != 0 {
		t.Fatalf("echo hello: code %d, stdout %q, stderr %q", st.ExitCode, out.String(), errb.String())
	}
}
