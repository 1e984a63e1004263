// Command pulumi-language-nodejs is a Node.js language host for the Pulumi
// engine, built from the sdk/v3 module at the engine's own version.
//
// Why it exists: Pulumi's own host lives in a separate Go module
// (github.com/pulumi/pulumi/sdk/nodejs/cmd/pulumi-language-nodejs/v3) that has
// no tags, and the module proxy reachable here refuses every pseudo-version of
// it that we tried (see engine/README.md). The engine only needs the
// LanguageRuntime gRPC service; this host implements it the same way: it runs
// `@pulumi/pulumi/cmd/run` from the program's node_modules with the flags and
// environment (PULUMI_CONFIG, PULUMI_CONFIG_SECRET_KEYS, PULUMI_NODEJS_TYPESCRIPT,
// PULUMI_NODEJS_TSCONFIG_PATH) that the SDK reads, and `RunPlugin` runs Node
// policy packs (`--policy-pack`) with the SDK's run-policy-pack.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Exit code with which the SDK says it already printed an actionable message.
const exitAfterUserMessage = 32

func main() {
	// Older engines passed the runtime options as flags; this one sends them in
	// RunRequest.Info.Options (see runOptions), so the flags are accepted and ignored.
	flag.String("tracing", "", "ignored: tracing is not supported by this host")
	flag.Bool("typescript", true, "ignored: see runtime.options.typescript")
	flag.String("root", "", "ignored")
	flag.String("tsconfig", "", "ignored: see runtime.options.tsconfig")
	flag.String("nodeargs", "", "ignored: see runtime.options.nodeargs")
	flag.String("packagemanager", "", "ignored")
	flag.Parse()
	logging.InitLogging(false, 0, false)

	var engineAddress string
	if args := flag.Args(); len(args) > 0 {
		engineAddress = args[0]
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	cancelChannel := make(chan bool)
	go func() {
		<-ctx.Done()
		cancel()
		close(cancelChannel)
	}()
	if engineAddress != "" {
		// Exit with the engine instead of lingering as an orphan.
		if err := rpcutil.Healthcheck(ctx, engineAddress, 5*time.Minute, cancel); err != nil {
			cmdutil.Exit(fmt.Errorf("could not start health check: %w", err))
		}
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancelChannel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, &host{engineAddress: engineAddress})
			return nil
		},
	})
	if err != nil {
		cmdutil.Exit(fmt.Errorf("could not start language host: %w", err))
	}
	// The engine reads the port from the first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		cmdutil.Exit(fmt.Errorf("language host stopped serving: %w", err))
	}
}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
}

func (h *host) Handshake(ctx context.Context, req *pulumirpc.LanguageHandshakeRequest) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engineAddress = req.EngineAddress
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

// Dynamic providers are served by pulumi-resource-pulumi-nodejs, a bundled
// plugin that set-up installs next to the pulumi binary (where the engine
// looks for bundled plugins), so the program needs no plugin downloads.
func (h *host) GetRequiredPackages(ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) GetRequiredPlugins(ctx context.Context, req *pulumirpc.GetRequiredPluginsRequest) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetPluginInfo(ctx context.Context, _ *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// Dependencies are installed by the project's own set-up (npm ci), never here.
func (h *host) InstallDependencies(req *pulumirpc.InstallDependenciesRequest, server grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse]) error {
	return nil
}

func (h *host) RuntimeOptionsPrompts(ctx context.Context, req *pulumirpc.RuntimeOptionsRequest) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

func (h *host) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{Executable: node, Version: strings.TrimSpace(string(out))}, nil
}

func (h *host) GetProgramDependencies(ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest) (*pulumirpc.GetProgramDependenciesResponse, error) {
	return &pulumirpc.GetProgramDependenciesResponse{}, nil
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	programDir := req.GetPwd()
	entryPoint := req.GetProgram()
	rootDir := ""
	if info := req.GetInfo(); info != nil {
		programDir = info.GetProgramDirectory()
		entryPoint = info.GetEntryPoint()
		rootDir = info.GetRootDirectory()
	}
	opts, err := runOptions(req.GetInfo())
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return &pulumirpc.RunResponse{Error: "node is not on PATH: " + err.Error()}, nil
	}
	runPath, err := resolveModule(node, programDir, "@pulumi/pulumi/cmd/run")
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	args := append(append([]string{}, opts.nodeArgs...), runPath)
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("organization", req.GetOrganization())
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("root-directory", rootDir)
	add("pwd", programDir)
	if req.GetDryRun() {
		args = append(args, "--dry-run")
	}
	add("query-mode", strconv.FormatBool(req.GetQueryMode()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	args = append(args, entryPoint)
	args = append(args, req.GetArgs()...)

	cfg, err := configJSON(req.GetConfig())
	if err != nil {
		return &pulumirpc.RunResponse{Error: "failed to serialize configuration: " + err.Error()}, nil
	}
	secretKeys, err := json.Marshal(nonNil(req.GetConfigSecretKeys()))
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	cmd := exec.Command(node, args...)
	cmd.Dir = programDir
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(),
		"PULUMI_CONFIG="+cfg,
		"PULUMI_CONFIG_SECRET_KEYS="+string(secretKeys))
	// @pulumi/pulumi/cmd/run reads these: with PULUMI_NODEJS_TYPESCRIPT=true it
	// registers ts-node (the program's own, else the SDK's vendored one) with the
	// tsconfig.json of the program directory, or PULUMI_NODEJS_TSCONFIG_PATH.
	if opts.typescript {
		cmd.Env = append(cmd.Env, "PULUMI_NODEJS_TYPESCRIPT=true")
	}
	if opts.tsconfig != "" {
		cmd.Env = append(cmd.Env, "PULUMI_NODEJS_TSCONFIG_PATH="+opts.tsconfig)
	}
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitAfterUserMessage {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode())}, nil
		}
		return &pulumirpc.RunResponse{Error: "could not run node: " + err.Error()}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// RunPlugin runs a plugin written in Node.js from its directory: for the engine,
// that is a policy pack (`--policy-pack <dir>`, Kind "analyzer", with a
// PulumiPolicy.yaml of runtime nodejs) or a provider with a PulumiPlugin.yaml.
// Like Pulumi's own host it starts the SDK's runner from the plugin's
// node_modules: `node @pulumi/pulumi/cmd/run-policy-pack <engine address>
// <dir>` for a policy pack, `node @pulumi/pulumi/cmd/run-plugin <dir> <args…>`
// otherwise, with the environment the engine sent, and streams the process's
// stdout (whose first line is the port it serves on) and stderr back, then its
// exit code. The engine ends the plugin by cancelling the call, which kills node.
func (h *host) RunPlugin(req *pulumirpc.RunPluginRequest, server pulumirpc.LanguageRuntime_RunPluginServer) error {
	info := req.GetInfo()
	if info == nil || info.GetProgramDirectory() == "" {
		return errors.New("RunPlugin: the request names no plugin directory")
	}
	pluginDir := info.GetProgramDirectory()
	opts, err := runOptions(info)
	if err != nil {
		return err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("node is not on PATH: %w", err)
	}
	closer, stdout, stderr, err := rpcutil.MakeRunPluginStreams(server, false)
	if err != nil {
		return err
	}

	args := append([]string{}, opts.nodeArgs...)
	// A policy pack's runner takes the engine's address, then the pack's directory; the
	// pack's PolicyPack reads its version from package.json in the working directory.
	dir := pluginDir
	if req.GetKind() == "analyzer" {
		runPath, err := resolveModule(node, pluginDir, "@pulumi/pulumi/cmd/run-policy-pack")
		if err != nil {
			return err
		}
		args = append(append(append(args, runPath), req.GetArgs()...), pluginDir)
	} else {
		runPath, err := resolveModule(node, pluginDir, "@pulumi/pulumi/cmd/run-plugin")
		if err != nil {
			return err
		}
		args = append(append(args, runPath, pluginDir), req.GetArgs()...)
		if req.GetPwd() != "" {
			dir = req.GetPwd()
		}
	}

	env := req.GetEnv()
	if len(env) == 0 {
		env = os.Environ()
	}
	env = append([]string{}, env...)
	if opts.typescript {
		env = append(env, "PULUMI_NODEJS_TYPESCRIPT=true")
	}
	if opts.tsconfig != "" {
		env = append(env, "PULUMI_NODEJS_TSCONFIG_PATH="+opts.tsconfig)
	}

	cmd := exec.CommandContext(server.Context(), node, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	runErr := cmd.Run()
	if err := closer.Close(); err != nil {
		return err
	}
	code := 0
	if runErr != nil {
		var exitErr *exec.ExitError
		if !errors.As(runErr, &exitErr) {
			return fmt.Errorf("could not run node: %w", runErr)
		}
		code = exitErr.ExitCode()
	}
	return server.Send(&pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: int32(code)}})
}

// nodeOptions are Pulumi.yaml's runtime.options, read as Pulumi's own host reads them.
type nodeOptions struct {
	// Run TypeScript sources through ts-node; true unless the project says false.
	typescript bool
	// tsconfig.json to use, relative to the program directory.
	tsconfig string
	// Extra arguments for node, before the SDK's run script.
	nodeArgs []string
}

func runOptions(info *pulumirpc.ProgramInfo) (nodeOptions, error) {
	opts := nodeOptions{typescript: true}
	if info == nil || info.GetOptions() == nil {
		return opts, nil
	}
	m := info.GetOptions().AsMap()
	if v, ok := m["typescript"]; ok {
		b, ok := v.(bool)
		if !ok {
			return opts, fmt.Errorf("runtime option typescript must be a boolean, found %v", v)
		}
		opts.typescript = b
	}
	if v, ok := m["tsconfig"]; ok {
		s, ok := v.(string)
		if !ok {
			return opts, fmt.Errorf("runtime option tsconfig must be a string, found %v", v)
		}
		opts.tsconfig = s
	}
	if v, ok := m["nodeargs"]; ok {
		s, ok := v.(string)
		if !ok {
			return opts, fmt.Errorf("runtime option nodeargs must be a string, found %v", v)
		}
		opts.nodeArgs = strings.Fields(s)
	}
	return opts, nil
}

// resolveModule asks node itself, so resolution follows Node's own rules.
func resolveModule(node, dir, module string) (string, error) {
	cmd := exec.Command(node, "-e", "console.log(require.resolve(process.argv[1]))", module)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cannot find %s from %s (run `npm ci` there): %w", module, dir, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// The SDK reads keys as "<namespace>:config:<name>", the format older SDKs expect too.
func configJSON(cfg map[string]string) (string, error) {
	out := make(map[string]string, len(cfg))
	for k, v := range cfg {
		key, err := config.ParseKey(k)
		if err != nil {
			return "", err
		}
		out[key.Namespace()+":config:"+key.Name()] = v
	}
	b, err := json.Marshal(out)
	return string(b), err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
