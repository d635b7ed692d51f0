package integration

import (
	"bytes"
	"context"
	"fmt"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

func bootAndRun(ctx context.Context, cfg vm.Config, i int) (vm.VM, *agent.Client, error) {
	v, c, err := sandbox.BootVM(ctx, driver, cfg)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	st, err := c.Run(ctx, &agent.ProcessSpec{Id: "echo", Args: []string{"echo", fmt.Sprint(i)}}, nil, &out, nil)
	if err != nil {
		return v, c, err
	}
	if want := fmt.Sprintf("%d\n", i); st.ExitCode != 0 || out.String() != want {
		return v, c, fmt.Errorf("echo %d: exit %d, out %q", i, st.ExitCode, out.String())
	}
	return v, c, nil
}
