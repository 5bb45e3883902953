/*
 * tools/cmd.h - the subcommands of the tomofs program. Each takes the arguments that follow
 * the subcommand name (argv[0] is the subcommand) and returns the process exit status:
 * 0 success, 1 failure, 2 bad usage.
 */
#ifndef TOMO_CMD_H
#define TOMO_CMD_H

int tomo_cmd_mount(int argc, char **argv);
int tomo_cmd_umount(int argc, char **argv);
int tomo_cmd_info(int argc, char **argv);
int tomo_cmd_export(int argc, char **argv);
int tomo_cmd_phantom(int argc, char **argv);
int tomo_cmd_bench(int argc, char **argv);
int tomo_cmd_cache(int argc, char **argv);
int tomo_cmd_train(int argc, char **argv);

#endif
