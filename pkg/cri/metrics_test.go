package cri

import "testing"

// Every descriptor has help and labels, and names are unique.
func TestMetricDescriptors(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range metricDescriptors {
		if d.Help == "" || len(d.LabelKeys) < len(baseLabels) {
			t.Errorf("descriptor %s: help %q labels %v", d.Name, d.Help, d.LabelKeys)
		}
		if seen[d.Name] {
			t.Errorf("descriptor %s twice", d.Name)
		}
		seen[d.Name] = true
	}
}
