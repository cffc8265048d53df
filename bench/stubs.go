package main

import "context"

func rescueCmd(ctx context.Context, args []string) error      { return nil }
func appendCmd(ctx context.Context, args []string) error      { return nil }
func fanoutCmd(ctx context.Context, args []string) error      { return nil }
func riverWorkerCmd(ctx context.Context, args []string) error { return nil }
