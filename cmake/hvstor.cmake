# Helpers shared by the module and test CMake files.

# hvstor_module(NAME SOURCES... [DEPS targets...]) builds library hvstor_NAME
# from the module folder; its public header is the folder itself.
function(hvstor_module name)
    cmake_parse_arguments(M "" "" "SOURCES;DEPS" ${ARGN})
    string(REPLACE "-" "_" lib ${name})
    if(NOT M_SOURCES)
        return()        # the module has no code yet
    endif()
    add_library(hvstor_${lib} STATIC ${M_SOURCES})
    target_include_directories(hvstor_${lib} PUBLIC ${CMAKE_SOURCE_DIR}/${name})
    target_link_libraries(hvstor_${lib} PUBLIC ${M_DEPS})
endfunction()
