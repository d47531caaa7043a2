// Command check reads deploy/'s Dockerfile and compose file with the code
// the real tools use: BuildKit's Dockerfile parser and linter (docker build)
// and compose-go's loader with the Compose Specification schema (docker
// compose). No Docker engine is needed. Exit 1 on any error or lint warning.
//
//	go run . ../Dockerfile ../compose.yaml
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: check DOCKERFILE COMPOSE_FILE")
		os.Exit(2)
	}
	failed := false
	for _, err := range checkDockerfile(os.Args[1]) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		failed = true
	}
	if err := checkCompose(os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[2], err)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
	fmt.Println("deploy: Dockerfile and compose file check out")
}

func checkDockerfile(path string) []error {
	f, err := os.Open(path)
	if err != nil {
		return []error{err}
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, w := range res.Warnings {
		errs = append(errs, fmt.Errorf("line %d: %s", w.Location.Start.Line, w.Short))
	}
	lint := linter.New(&linter.Config{
		Warn: func(rule, description, url, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			errs = append(errs, fmt.Errorf("line %d: %s: %s", line, rule, msg))
		},
	})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return append(errs, err)
	}
	if len(stages) < 2 {
		errs = append(errs, fmt.Errorf("%d stage(s): the image is built in a build stage and copied into a slim one", len(stages)))
	}
	return errs
}

func checkCompose(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{abs}, cli.WithWorkingDirectory(filepath.Dir(abs)))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	for _, want := range []string{"kafka", "topics", "winback", "prometheus"} {
		if _, err := project.GetService(want); err != nil {
			return fmt.Errorf("service %q: %v", want, err)
		}
	}
	return nil
}
