// Everything a trainer needs: #include <ddp/ddp.h>.
#pragma once

#include <ddp/collectives.h>
#include <ddp/comm_hook.h>
#include <ddp/config.h>
#include <ddp/defaults.h>
#include <ddp/distributed_data_parallel.h>
#include <ddp/error.h>
#include <ddp/hooks.h>
#include <ddp/init.h>
#include <ddp/join.h>
#include <ddp/no_sync_guard.h>
#include <ddp/options.h>
#include <ddp/output_tensors.h>
#include <ddp/overlapped_optimizer.h>
#include <ddp/process_group.h>
#include <ddp/reducer.h>
#include <ddp/reducer_stats.h>
#include <ddp/timeline.h>
#include <ddp/work.h>
