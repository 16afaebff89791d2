package main

import (
	"strings"
	"testing"
)

func TestParseBackendSpec(t *testing.T) {
	sp, err := parseBackendSpec("A1111=http://127.0.0.1:7860,name=studio,timeout=5m")
	if err != nil {
		t.Fatal(err)
	}
	if sp.kind != "a1111" || sp.url != "http://127.0.0.1:7860" || sp.opts["name"] != "studio" || sp.opts["timeout"] != "5m" {
		t.Errorf("parsed %+v", sp)
	}
	if sp, err := parseBackendSpec("comfyui=http://h:8188,workflow=g.json"); err != nil || sp.opts["workflow"] != "g.json" {
		t.Errorf("comfyui workflow: %+v, %v", sp, err)
	}
	for _, bad := range []string{
		"", "a1111", "a1111=", "sdxl=http://h", "openai=http://h,workflow=g.json",
		"a1111=http://h,name=a,name=b", "a1111=http://h,colour",
	} {
		_, err := parseBackendSpec(bad)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "--backend") {
			t.Errorf("%q: %v, want a one-line --backend error", bad, err)
		}
	}
}
