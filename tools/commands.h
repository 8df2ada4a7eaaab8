/* commands.h: the entry points of the dsv32 commands (tools/cmd_*.c), listed
 * in the table in main.c. Each takes argv from the command name on and
 * returns the process exit status. */
#ifndef DSV_COMMANDS_H
#define DSV_COMMANDS_H

int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_parse(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_bpe(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_adapt(int argc, char **argv);

#endif
